"""Resume equals uninterrupted (SIGTERM mid-run, then the same command again), NaN and
checkpoint errors, and `sde.load_run` on the result."""

import json
import os
import signal

import pytest
import torch

import sde.losses
from sde.train import run
from sde.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from sde.training.loop import NonFiniteLossError

from .conftest import FAST, TINY, compose_train

# A tiny U-Net with dropout on the digits: exercises every random stream of a step.
DIGITS = ["experiment=vp_digits", *FAST, *TINY["ddpmpp"], "model.dropout=0.1",
          "trainer.checkpoint_every=100"]


def losses_of(run_dir):
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [(h["step"], h["loss"]) for h in history]


def wrap_loss(monkeypatch, on_call):
    """Replace sde.losses.dsm_loss (what the config instantiates) with a wrapper that calls
    `on_call(n, losses)` on the n-th training call."""
    real, calls = sde.losses.dsm_loss, {"n": 0}

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            out = on_call(calls["n"], out)
        return out

    monkeypatch.setattr(sde.losses, "dsm_loss", wrapped)


def test_sigterm_then_rerun_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    whole = run(compose_train([*DIGITS, "trainer.steps=6"]), tmp_path / "whole")

    def sigterm_at_3(n, out):
        if n == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    with monkeypatch.context() as m:
        wrap_loss(m, sigterm_at_3)
        stopped = run(compose_train([*DIGITS, "trainer.steps=6"]), tmp_path / "split")
    assert stopped["step"] == 3  # checkpointed and stopped cleanly, though checkpoint_every=100
    assert load_checkpoint(latest_checkpoint(tmp_path / "split"))["step"] == 3
    resumed = run(compose_train([*DIGITS, "trainer.steps=6"]), tmp_path / "split")
    assert resumed["step"] == 6
    assert losses_of(tmp_path / "split") == losses_of(tmp_path / "whole")  # exactly
    a = load_checkpoint(latest_checkpoint(tmp_path / "whole"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "split"))
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert whole["ema_eval_loss"] == resumed["ema_eval_loss"]


def test_nan_loss_names_the_step(tmp_path, monkeypatch):
    wrap_loss(monkeypatch, lambda n, out: out * float("nan") if n == 2 else out)
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 2"):
        run(compose_train(["experiment=vp_toy", "loss=dsm", *FAST, *TINY["mlp"], "data.n=64",
                           "trainer.steps=4", "trainer.log_every=4"]), tmp_path)
    assert latest_checkpoint(tmp_path) is None  # nothing non-finite was saved


def test_corrupt_or_incompatible_checkpoint_in_the_run_dir(tmp_path):
    base = ["experiment=vp_toy", *FAST, *TINY["mlp"], "data.n=64", "trainer.steps=2"]
    run(compose_train(base), tmp_path / "a")
    with pytest.raises(CheckpointError, match="different `model`"):
        run(compose_train([*base, "model.hidden=32"]), tmp_path / "a")
    ckpt = latest_checkpoint(tmp_path / "a")
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(compose_train([*base, "trainer.steps=4"]), tmp_path / "a")


def test_load_run_rebuilds_the_model_from_the_checkpoint(tmp_path):
    from sde import sampling
    from sde.run import load_run

    run(compose_train([*DIGITS, "trainer.steps=2"]), tmp_path)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))
    loaded = load_run(tmp_path, device="cpu")
    assert loaded.step == 2 and loaded.shape == (1, 8, 8) and not loaded.model.training
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name])
    raw = load_run(latest_checkpoint(tmp_path), ema=False)
    for name, value in raw.model.state_dict().items():
        assert torch.equal(value, ckpt["model"][name])
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded.inverse_scaler(loaded.scaler(x)), x)
    assert loaded.scaler(x).min() < 0  # digits are centred to [-1, 1]
    short = type(loaded.sde)(**{**loaded.sde.hparams(), "N": 25})
    samples, nfe = sampling.pc_sample(short, loaded.score_fn, (2, *loaded.shape), corrector="none",
                                      generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all() and nfe > 0
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(tmp_path / "empty")
