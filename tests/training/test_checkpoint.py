"""Checkpoints: atomic writes, keep-last-k, weights_only loading, clear errors."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from sde.training.checkpoint import (
    FORMAT,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "ema": {"w": torch.zeros(3)},
            "optimizer": {}, "rng": {"torch": torch.get_rng_state()},
            "config": {"seed": 0, "x": [1, 2.5, None, True, "a"]}}


def test_round_trip_and_keep_last_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(state(step), tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000004.pt", "ckpt_00000005.pt"]
    latest = latest_checkpoint(tmp_path)
    ckpt = torch.load(latest, weights_only=True)  # plain tensors and containers only
    assert ckpt["format"] == FORMAT and ckpt["step"] == 5
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.full((3,), 5.0))
    assert load_checkpoint(latest)["config"]["x"] == [1, 2.5, None, True, "a"]
    assert latest_checkpoint(latest) == latest
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_corrupt_or_foreign_checkpoint_is_one_clear_error(tmp_path):
    path = save_checkpoint(state(1), tmp_path, 1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or not an sde checkpoint"):
        load_checkpoint(path)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an sde-checkpoint-v1"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_kill_during_a_write_keeps_the_previous_checkpoint(tmp_path):
    """A process killed (SIGKILL) half-way through writing step 2 leaves step 1 loadable."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from sde.training import checkpoint as c
        run = {str(tmp_path)!r}
        state = lambda w: {{"model": {{"w": w}}, "ema": {{}}, "config": {{}}}}
        c.save_checkpoint(state(torch.ones(1000)), run, 1)
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.flush(); f.truncate(f.tell() // 2); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        c.save_checkpoint(state(torch.zeros(1000)), run, 2)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / "ckpt_00000002.pt.tmp").exists()
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "ckpt_00000001.pt"
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.ones(1000))
    save_checkpoint(state(3), tmp_path, 3)  # the next save clears the stray file
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
