"""Training into a run directory, robustly (issue 10, section 5): a second trainer is locked
out, a refused resume keeps config.yaml, other data of the same shape is refused, a NaN loss
names its real cause, and a sweep survives a failing point."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sde.data
import sde.losses
from sde.runs.checkpoint import CheckpointError
from sde.runs.files import RunDirError, locked
from sde.train import run
from sde.training.loop import NonFiniteLossError, _check_finite

from .conftest import FAST, TINY, compose_train

ROOT = Path(__file__).resolve().parents[2]
# loss=dsm: some tests patch sde.losses.dsm_loss (vp_toy's own loss is edm_sharp)
TOY = ["experiment=vp_toy", "loss=dsm", *FAST, *TINY["mlp"], "data.n=64", "trainer.steps=2"]


def test_a_second_trainer_in_the_same_folder_is_refused(tmp_path):
    with locked(tmp_path / ".train.lock"):  # another sde.train holds the folder
        (tmp_path / ".train.pid").write_text("4242\n")
        with pytest.raises(RunDirError, match=r"in use by another sde.train \(process 4242\)"):
            run(compose_train(TOY), tmp_path)
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()
    assert run(compose_train(TOY), tmp_path)["step"] == 2  # free again


def test_a_refused_resume_keeps_config_yaml(tmp_path):
    run(compose_train(TOY), tmp_path)
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(CheckpointError, match="different `model`"):
        run(compose_train([*TOY, "model.hidden=32"]), tmp_path)
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_resume_on_other_data_of_the_same_shape_is_refused(tmp_path):
    run(compose_train([*TOY, "data.seed=0"]), tmp_path)
    first = sde.data.Dataset(name="checkerboard", n=64, seed=0).fingerprint
    with pytest.raises(CheckpointError, match=f"other data of the same shape .*{first}"):
        run(compose_train([*TOY, "data.seed=1", "trainer.steps=4"]), tmp_path)  # other points
    assert run(compose_train([*TOY, "data.seed=0", "trainer.steps=4"]), tmp_path)["step"] == 4


def test_nan_loss_from_nan_data_blames_the_data(tmp_path, monkeypatch):
    real = sde.data.Dataset.batch

    def batch(self, step, batch_size, **kw):
        x = real(self, step, batch_size, **kw)
        if step == 1:  # the batch of step 2
            x = x.clone()
            x[3] = float("nan")
        return x

    monkeypatch.setattr(sde.data.Dataset, "batch", batch)
    with pytest.raises(NonFiniteLossError, match=r"at step 2: its training batch holds NaN/Inf "
                       r"\(batch rows \[3\]\), so the data is the cause") as err:
        run(compose_train([*TOY, "trainer.steps=3", "trainer.log_every=3"]), tmp_path)
    assert "optim.lr" not in str(err.value)


def _nan_loss_at(monkeypatch, at: int):
    real, calls = sde.losses.dsm_loss, {"n": 0}

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            out = out * float("nan") if calls["n"] == at else out
        return out

    monkeypatch.setattr(sde.losses, "dsm_loss", wrapped)


def test_nan_loss_names_the_batch_size_only_where_a_batch_of_one_is_the_cause(tmp_path,
                                                                               monkeypatch):
    """A batch of one breaks only batch statistics (BatchNorm): an MLP's NaN loss at batch size
    1 blames the optimisation, as at batch size 4, and a BatchNorm network's the batch size."""
    for batch_size in (1, 4):
        _nan_loss_at(monkeypatch, 1)
        with pytest.raises(NonFiniteLossError, match=r"\(the batch was finite\); lower optim.lr") \
                as err:
            run(compose_train([*TOY, f"trainer.batch_size={batch_size}"]), tmp_path / str(batch_size))
        assert "trainer.batch_size" not in str(err.value)
    nan = [torch.tensor(1.0), torch.tensor(float("nan"))]
    batch_norm = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(NonFiniteLossError, match=r"at step 8 with 1 example per process: the "
                       r"network's batch statistics \(BatchNorm\).*raise trainer.batch_size"):
        _check_finite(nan, 7, batch_size=1, modules=(torch.nn.Linear(2, 2), batch_norm))
    with pytest.raises(NonFiniteLossError, match=r"\(the batch was finite\); lower optim.lr"):
        _check_finite(nan, 7, batch_size=2, modules=(batch_norm,))


def test_a_failing_sweep_point_does_not_abort_the_others(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "sde.train", "-m", *TOY, "trainer.steps=abc,2",
         f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (tmp_path / "1" / "checkpoints" / "ckpt_00000002.pt").is_file()  # the second point ran
    assert "1 sweep point(s) failed" in proc.stderr
    assert "sweep point #0 (" in proc.stderr and "trainer.steps=abc): ValueError: trainer.steps " \
        "must be an integer >= 1, got 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_precision_auto_trains(tmp_path):
    """trainer.precision=auto resolves to a precision this device runs (fp32 on this CPU)."""
    assert run(compose_train([*TOY, "trainer.precision=auto"]), tmp_path)["step"] == 2
    with pytest.raises(ValueError, match="trainer.precision"):
        run(compose_train([*TOY, "trainer.precision=fp16"]), tmp_path / "bad")


def test_a_full_run_folder_stops_training_before_the_data_loads(tmp_path, monkeypatch):
    import errno

    import sde.runs.files

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sde.runs.files.os, "fsync", fsync)
    monkeypatch.setattr(sde.data.Dataset, "__init__", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(RunDirError, match=f"cannot write to the run directory {tmp_path}: the disk "
                       "is full"):
        run(compose_train(TOY), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no probe or .tmp left behind


def test_top_level_tags_become_wandb_tags(tmp_path):
    from sde.runs.sweep import run_name

    cfg = compose_train(["experiment=vp_toy", "logger=wandb", "logger.tags=[paper]",
                         "tags=[baseline,lr-sweep]"])
    names = run_name(cfg, tmp_path / "2026-01-01_00-00-00")
    assert names == {"name": "vp_toy/2026-01-01_00-00-00", "group": None,
                     "tags": ["paper", "baseline", "lr-sweep"]}
    assert run_name(compose_train(["experiment=vp_toy", "logger=none"]), tmp_path) == {}


def test_an_unwritable_run_folder_is_one_line_before_hydra_writes_there(tmp_path):
    """Hydra writes train.log and .hydra/ into the run (or sweep) folder before `sde.train`'s code
    runs; a folder that cannot be written (here: under a regular file, which fails for root too,
    unlike a read-only mode) is one line and exit 2, not Hydra's traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    for folder in ("hydra.run.dir", "hydra.sweep.dir"):
        args = ["-m"] if folder == "hydra.sweep.dir" else []
        proc = subprocess.run([sys.executable, "-m", "sde.train", *args, *TOY,
                               f"{folder}={blocker / 'run'}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        what = "sweep" if args else "run"
        assert proc.stderr.strip().splitlines()[-1] == (
            f"sde.train: error: cannot write to the {what} directory {blocker / 'run'}: Not a "
            "directory; free space, fix the permissions or choose another folder "
            "(hydra.run.dir=DIR / out=...)")
