"""A run directory survives bad files and concurrent writers (issue 10, section 5): checkpoints
that hold code or NaN weights, evaluation during training, full or read-only folders, misread
values on the command line, and an unreachable W&B."""

import errno
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from sde.runs import files, logger
from sde.runs.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from sde.runs.env import resolve_device
from sde.runs.evaluate import EvalOptions, evaluate_run
from sde.runs.load import load_run
from sde.runs.metrics import MetricsFile, record_eval
from sde.runs.sampling import sample_run

FAST = {"sampler": "pc", "sampler_options": {"steps": 5, "corrector": "none",
                                             "predictor": "euler_maruyama"}}
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def cli(module, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=ENV, timeout=300, cwd=cwd)


@pytest.fixture
def run_copy(toy_run, tmp_path):
    """A private copy of the tiny toy run, free to damage."""
    return shutil.copytree(toy_run, tmp_path / "run")


class _Payload:
    """Unpickling this would create `marker`: the code a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_holding_code_is_refused_and_named(run_copy, tmp_path):
    ckpt = latest_checkpoint(run_copy)
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    torch.save({**state, "extra": _Payload(marker)}, ckpt)
    with pytest.raises(CheckpointError, match=r"contains code \(the pickled global `io.open`"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="Nothing in it was executed"):
        load_run(run_copy)
    proc = cli("sde.sample", f"run={run_copy}", "n=2", f"out={tmp_path / 's.npz'}")
    assert proc.returncode == 2 and "contains code" in proc.stderr
    assert "Traceback" not in proc.stderr and "corrupt" not in proc.stderr
    assert not marker.exists()


def test_nan_weights_are_refused_on_load_and_sample(run_copy, tmp_path):
    ckpt = latest_checkpoint(run_copy)
    state = torch.load(ckpt, weights_only=True)
    name = next(iter(state["ema"]))
    state["ema"][name] = torch.full_like(state["ema"][name], float("nan"))
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=f"EMA weights hold .* NaN/Inf .*{name}"):
        load_run(run_copy)
    load_run(run_copy, ema=False)  # the raw weights are fine
    out = tmp_path / "s.npz"
    proc = cli("sde.sample", f"run={run_copy}", "n=2", f"out={out}")
    assert proc.returncode == 2 and "NaN/Inf" in proc.stderr and not out.exists()


def test_evaluation_during_training_is_not_erased(tmp_path):
    """The trainer holds its history in memory and rewrites metrics.json; an evaluation that
    wrote in between must survive, also when both write at the same time."""
    trainer = MetricsFile(tmp_path)  # opened at the start of training
    record_eval(tmp_path, {"nll": 1.5}, {"checkpoint_step": 2})
    trainer.add({"loss": 0.3}, step=3)
    trainer.write()
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["eval"] == {"nll": 1.5} and data["train"]["loss"] == 0.3

    def evaluate_many():
        for k in range(40):
            record_eval(tmp_path, {"k": k}, {})

    thread = threading.Thread(target=evaluate_many)
    thread.start()
    for step in range(4, 44):
        trainer.add({"loss": 0.1}, step=step)
        trainer.write()
    thread.join()
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [row.get("k") for row in data["eval_history"][1:]] == list(range(40))
    assert [h["step"] for h in data["history"]] == list(range(3, 44))
    assert not list(tmp_path.glob("*.tmp"))


def _fail_fsync(monkeypatch, err=errno.ENOSPC):
    def fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_full_disk_is_detected_before_the_work_and_leaves_no_tmp(run_copy, monkeypatch):
    before = sorted(p.name for p in run_copy.rglob("*"))
    _fail_fsync(monkeypatch)
    monkeypatch.setattr("sde.runs.load.load_run", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(files.RunDirError, match="the disk is full"):
        evaluate_run(run_copy, metrics=["nll"], logger={"backend": "none"}, progress=False)
    with pytest.raises(files.RunDirError, match="the disk is full"):
        sample_run(run_copy, n=2, progress=False)
    with pytest.raises(OSError):
        files.write_json(run_copy / "metrics.json", {"x": 1})
    assert sorted(p.name for p in run_copy.rglob("*")) == before  # no .tmp, nothing replaced


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_folder_is_named(run_copy):
    os.chmod(run_copy, 0o555)
    try:
        with pytest.raises(files.RunDirError, match="permission denied"):
            evaluate_run(run_copy, metrics=["nll"], progress=False)
    finally:
        os.chmod(run_copy, 0o755)


def test_misread_values_are_refused_with_the_key(toy_run, tmp_path):
    with pytest.raises(ValueError, match="ema must be true or false, got 'no'"):
        sample_run(toy_run, ema="no", n=2, progress=False)
    for key, value, low in (("n", "abc", 1), ("n", 0, 1), ("seed", -1, 0), ("batch_size", 0, 1)):
        with pytest.raises(ValueError, match=f"{key} must be an integer >= {low}, got {value!r}"):
            sample_run(toy_run, **{"n": 2, key: value}, progress=False)
    with pytest.raises(ValueError, match=r"eval.likelihood_n must be an integer >= 1, got 0"):
        EvalOptions(likelihood_n=0)
    with pytest.raises(ValueError, match=r"unknown eval keys \['likelihod_n'\]"):
        EvalOptions.of({"likelihod_n": 3})
    with pytest.raises(ValueError, match="eval.ema must be true or false"):
        evaluate_run(toy_run, ema="no", progress=False)
    proc = cli("sde.sample", f"run={toy_run}", "n=abc", f"out={tmp_path / 'x.npz'}")
    assert proc.returncode == 2 and "sde.sample: error: n must be an integer" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("sde.evaluate", f"run={toy_run}", "eval.likelihood_n=0", "logger=none")
    assert proc.returncode == 2 and "eval.likelihood_n must be an integer >= 1" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_key():
    with pytest.raises(ValueError, match="device=cuda but no CUDA device is available; use device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="trainer.device=cuda:1 but no CUDA"):
        resolve_device("cuda:1", key="trainer.device")
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        resolve_device("gpu")


def test_unreachable_wandb_falls_back_to_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: refused
    with pytest.warns(UserWarning, match="W&B is not reachable .* logging offline"):
        assert logger.wandb_mode(None, timeout=2.0) == "offline"
    monkeypatch.setattr(logger, "wandb_reachable", lambda timeout: True)
    assert logger.wandb_mode(None, timeout=2.0) == "online"


def test_png_format_writes_one_file_per_seed(digits_run, toy_run, tmp_path):
    from PIL import Image

    rec = sample_run(digits_run, **FAST, n=3, seed=2, batch_size=2, format="png",
                     out_dir=tmp_path / "pngs", progress=False)
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == ["2000000.png", "2000001.png", "2000002.png"] and rec["format"] == "png"
    npz = sample_run(digits_run, **FAST, n=3, seed=2, batch_size=3, out=tmp_path / "s.npz",
                     progress=False)
    ref = np.load(npz["npz"])["samples"]  # (3, 1, 8, 8) in [0, 1]
    png = np.asarray(Image.open(tmp_path / "pngs" / "2000001.png"), dtype=np.float64) / 255
    np.testing.assert_allclose(png, ref[1, 0], atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="format=png writes images"):
        sample_run(toy_run, n=1, format="png", out_dir=tmp_path / "toy", progress=False)


def test_nan_samples_are_refused_before_any_file(run_copy, tmp_path):
    """Finite but huge weights overflow the network: the sampler's own check (or sample_run's,
    for a sampler without one) refuses the NaN samples, and nothing is written."""
    ckpt = latest_checkpoint(run_copy)
    state = torch.load(ckpt, weights_only=True)
    state["ema"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in state["ema"].items()}
    torch.save(state, ckpt)
    out = tmp_path / "s.npz"
    with pytest.raises(ValueError, match=r"(score_fn returned NaN or Inf during pc_sample"
                       r"|samples of sampler=pc hold NaN/Inf .*nothing was written)"):
        sample_run(run_copy, **FAST, n=3, out=out, progress=False)
    assert not out.exists() and not out.with_suffix(".png").exists()
