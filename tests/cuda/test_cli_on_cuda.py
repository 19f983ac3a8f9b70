"""The command lines end to end on one CUDA device, as a user with a GPU runs them: train (bf16
autocast where the GPU has it, torch.compile), resume, sample, evaluate, distill and the latent
runs. Tiny networks (`debug=fast`), so the whole file takes a minute or two (`make test-gpu`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ["experiment=vp_digits", "debug=fast", "trainer.device=cuda", "trainer.eval_every=0",
          "trainer.sample_every=0"]


def cli(module: str, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m module overrides...` with W&B off; fails the test with stderr's tail."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{module} {overrides}\n{proc.stderr[-3000:]}"
    return proc


def losses(run_dir: Path) -> list[tuple[int, float]]:
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return [(h["step"], h["loss"]) for h in history]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """6 steps of the default experiment on CUDA with precision=auto (bf16 on sm_80+)."""
    run = tmp_path_factory.mktemp("cuda") / "vp_digits"
    cli("sde.train", *DIGITS, "trainer.steps=6", "trainer.precision=auto",
        f"hydra.run.dir={run}")
    return run


def test_train_on_cuda_writes_a_loadable_run(digits_run):
    ckpt = torch.load(sorted((digits_run / "checkpoints").glob("*.pt"))[-1], map_location="cpu",
                      weights_only=True)
    assert ckpt["step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["ema"].values() if v.is_floating_point())
    assert all(np.isfinite(loss) for _, loss in losses(digits_run))


def test_resume_on_cuda_matches_the_uninterrupted_run(tmp_path):
    """3 steps, then the same run to 6, against 6 at once: the (seed, rank, step) streams make
    the batches and noise identical; CUDA kernels may differ in the last bits."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    cli("sde.train", *DIGITS, "trainer.steps=6", f"hydra.run.dir={whole}")
    cli("sde.train", *DIGITS, "trainer.steps=3", f"hydra.run.dir={split}")
    cli("sde.train", *DIGITS, "trainer.steps=6", f"hydra.run.dir={split}")
    a, b = losses(whole), losses(split)
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-4)
    print(f"CUDA resume bit-exact: {a == b}")


def test_compiled_bf16_training_on_cuda(tmp_path):
    cli("sde.train", *DIGITS, "trainer.steps=4", "trainer.compile=true", "trainer.precision=bf16",
        f"hydra.run.dir={tmp_path}")
    assert all(np.isfinite(loss) for _, loss in losses(tmp_path))


@pytest.mark.parametrize("sampler", ["pc", "dpm_solver_pp", "heun"])
def test_sampling_on_cuda_does_not_depend_on_the_batch_size(digits_run, tmp_path, sampler):
    """Per-sample seeds: the batch does not change a sample (pc without its Langevin corrector,
    whose batch-averaged step couples a batch; docs/sampling.md)."""
    common = [f"run={digits_run}", f"sampler={sampler}", "n=12", "device=cuda", "progress=false"]
    common += ["sampler.steps=30", "sampler.corrector=none"] if sampler == "pc" else ["sampler.steps=8"]
    cli("sde.sample", *common, "batch_size=12", f"out={tmp_path / 'a.npz'}")
    cli("sde.sample", *common, "batch_size=5", f"out={tmp_path / 'b.npz'}")
    a, b = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "ab")
    assert a.shape[0] == 12 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_evaluate_bpd_on_cuda(digits_run):
    cli("sde.evaluate", f"run={digits_run}", "logger=none", "device=cuda", "progress=false",
        "eval.likelihood_n=16")
    record = json.loads((digits_run / "metrics.json").read_text())["eval"]
    assert np.isfinite(record["bpd"]) and record["bpd"] > 0


@pytest.mark.parametrize("method", ["progressive", "consistency", "add"])
def test_distill_a_cuda_teacher_then_sample_the_student(digits_run, tmp_path, method):
    options = {"progressive": ["progressive.teacher_steps=4", "progressive.student_steps=2",
                               "progressive.steps_per_round=2"],
               "consistency": ["consistency.steps=2", "consistency.num_scales=6"],
               "add": ["add.steps=2", "add.student_steps=2"]}[method]
    student = tmp_path / "student"
    cli("sde.distill", f"teacher={digits_run}", f"method={method}", *options, "device=cuda",
        "trainer.batch_size=8", f"hydra.run.dir={student}")
    cli("sde.sample", f"run={student}", "sampler=distilled", "sampler.steps=2", "n=4",
        "device=cuda", "progress=false", f"out={tmp_path / 's.npz'}")
    assert np.isfinite(np.load(tmp_path / "s.npz")["samples"]).all()


def test_autoencoder_then_latent_run_on_cuda(tmp_path):
    ae, ldm = tmp_path / "ae", tmp_path / "ldm"
    cli("sde.train", "experiment=ae_digits", "debug=fast", "trainer.device=cuda",
        "trainer.sample_every=0", f"hydra.run.dir={ae}")
    cli("sde.train", "experiment=ldm_digits", "debug=fast", f"autoencoder={ae}",
        "trainer.device=cuda", "trainer.sample_every=0", f"hydra.run.dir={ldm}")
    cli("sde.sample", f"run={ldm}", "sampler=dpm_solver_pp", "sampler.steps=6", "n=4",
        "device=cuda", "progress=false", f"out={tmp_path / 'x.npz'}")
    x = np.load(tmp_path / "x.npz")["samples"]
    assert x.shape[1:] == (1, 8, 8) and np.isfinite(x).all()  # decoded to digits' shape
