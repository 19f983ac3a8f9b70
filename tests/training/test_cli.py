"""`python -m sde.train` as users run it: clear errors, sweeps, W&B offline, the default run."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import FAST, TINY

ROOT = Path(__file__).resolve().parents[2]
TOY = ["experiment=vp_toy", *FAST, *TINY["mlp"], "data.n=64", "trainer.steps=2"]


def train(*overrides, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "sde.train", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_missing_cifar_and_bad_override_end_with_one_clear_message(tmp_path):
    proc = train("experiment=vp_cifar", f"data.root={tmp_path}", "logger=none",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2  # the exit status of every bad input (sde.runs.env)
    assert "sde.train: error: CIFAR-10 not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = train("trainer.stepz=3", f"hydra.run.dir={tmp_path / 'run2'}")
    assert proc.returncode != 0 and "trainer.stepz" in proc.stderr


def test_sweep_and_wandb_offline(tmp_path):
    proc = train("-m", *[o for o in TOY if o != "logger=none"], "logger=wandb",
                 "optim.lr=1e-3,3e-4", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2 and all((r / "checkpoints" / "ckpt_00000002.pt").exists() for r in runs)
    assert all(list((r / "wandb").glob("offline-run-*")) for r in runs)


@pytest.mark.slow
def test_default_command_trains_digits(tmp_path):
    """`python -m sde.train` with no arguments (the README's main command): vp_digits."""
    start = time.perf_counter()
    proc = train("logger=none", f"hydra.run.dir={tmp_path}", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"default run: {time.perf_counter() - start:.0f} s")
    assert (tmp_path / "samples" / "step_00001500.png").exists()
