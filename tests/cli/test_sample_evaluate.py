"""A tiny trained run samples, evaluates and writes its files (sde.sample, sde.evaluate)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sde.runs.evaluate import evaluate_run
from sde.runs.paths import resolve_run
from sde.runs.sampling import sample_run

FAST_PC = {"sampler": "pc", "sampler_options": {  # continuous-time: any steps
    "steps": 20, "grid": "uniform", "eps": 1e-3, "corrector": "none",
    "predictor": "euler_maruyama", "snr": 0.16, "n_steps": 1}}


def test_sample_writes_npz_png_and_jsonl(toy_run, tmp_path, capsys):
    rec = sample_run(run=str(toy_run), **FAST_PC, n=6, seed=1, batch_size=4,
                     out=tmp_path / "s.npz", progress=False)
    files = np.load(tmp_path / "s.npz")
    assert files["samples"].shape == (6, 2) and np.isfinite(files["samples"]).all()
    assert files["seeds"].tolist() == list(range(1_000_000, 1_000_006))
    assert (tmp_path / "s.png").stat().st_size > 100
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["nfe"] == rec["nfe"] == 20 and line["img_per_s"] > 0 and line["sampler"] == "pc"
    logged = (toy_run / "samples.jsonl").read_text().strip().splitlines()
    assert json.loads(logged[-1])["npz"] == str(tmp_path / "s.npz")


def test_samples_identical_across_batch_sizes(toy_run, tmp_path):
    for b in (6, 4, 1):
        sample_run(run=str(toy_run), **FAST_PC, n=6, seed=2, batch_size=b,
                   out=tmp_path / f"b{b}.npz", progress=False)
    a, b, c = (np.load(tmp_path / f"b{k}.npz")["samples"] for k in (6, 4, 1))
    # the same noise per sample; only float32 GEMM rounding may differ with the batch size
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)
    other = sample_run(run=str(toy_run), **FAST_PC, n=6, seed=3, batch_size=6,
                       out=tmp_path / "s3.npz", progress=False)
    assert np.abs(np.load(other["npz"])["samples"] - a).max() > 1e-2


def test_sample_image_run_defaults_to_the_newest_run(digits_run, tmp_path):
    rec = sample_run(run=None, runs_root=digits_run.parent.parent, **FAST_PC, n=4,
                     seed=0, batch_size=4, progress=False)
    assert Path(rec["run"]) == digits_run
    samples = np.load(rec["npz"])["samples"]
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert Path(rec["png"]).is_file()


def test_evaluate_toy_writes_metrics_and_figures(toy_run):
    ev = {"batch_size": 64, "likelihood_n": 8, "repeats": 1, "hutchinson": "auto", "rtol": 1e-3,
          "atol": 1e-3, "likelihood_eps": 1e-3, "n": 32, "resolution": 6, "trajectories": 3}
    values = evaluate_run(run=str(toy_run), metrics=None, **FAST_PC, **ev,
                          logger={"backend": "none"}, progress=False)
    assert np.isfinite(values["nll"]) and values["nll_n"] == 8
    assert {"energy_distance", "mmd_rbf"} <= values.keys()
    saved = json.loads((toy_run / "metrics.json").read_text())
    assert saved["eval"]["nll"] == values["nll"] and "train" in saved
    assert saved["eval_history"][-1]["checkpoint_step"] == 2
    for name in ("samples", "density", "trajectories"):
        assert (toy_run / "eval" / f"{name}.png").stat().st_size > 100


def test_evaluate_digits_bpd_and_fid_without_weights(digits_run):
    ev = {"batch_size": 8, "likelihood_n": 4, "repeats": 1, "hutchinson": "rademacher",
          "rtol": 1e-3, "atol": 1e-3, "likelihood_eps": 1e-3, "inception_weights": None}
    values = evaluate_run(run=str(digits_run), metrics=None, **FAST_PC, **ev, progress=False)
    assert values["bpd_n"] == 4 and 0 < values["bpd"] < 100
    assert json.loads((digits_run / "metrics.json").read_text())["eval"]["bpd"] == values["bpd"]
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        evaluate_run(run=str(digits_run), metrics=["fid"], **FAST_PC, **ev)


def test_bad_run_path_message(tmp_path):
    with pytest.raises(ValueError, match="no such run directory"):
        resolve_run(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no checkpoints"):
        resolve_run(str(tmp_path))
    with pytest.raises(ValueError, match="no trained run"):
        resolve_run(None, tmp_path)
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "sde.sample", f"run={tmp_path / 'nope'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "sde.sample: error: run=" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_entry_points(toy_run, tmp_path):
    """`python -m sde.sample` and `python -m sde.evaluate` with Hydra overrides, end to end."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "sde.sample", f"run={toy_run}", "sampler=ddim", "sampler.steps=5",
         "n=5", "batch_size=5", f"out={out}", "progress=false"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["nfe"] == 5
    assert np.load(out)["samples"].shape == (5, 2)
    proc = subprocess.run(
        [sys.executable, "-m", "sde.evaluate", f"run={toy_run}", "metrics=[nll]", "logger=none",
         "eval.likelihood_n=4", "eval.rtol=1e-3", "eval.atol=1e-3", "progress=false"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nll" in json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.npz", "cli.png"]  # no Hydra dirs


def _image_folder(folder, n=6, seed=0) -> torch.Tensor:
    """n random 8x8 grey PNGs in `folder` -> the images (n, 1, 8, 8) in [0, 1]."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    return torch.from_numpy(images).double()[:, None] / 255


def _random_inception(path) -> str:
    """Random FID-Inception weights with He-initialised convolutions (the default init shrinks the
    2048 features to ~1e-7, where every FID is ~0), saved at `path`."""
    from sde.metrics.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    net.fc.weight.data.normal_(0, 2048 ** -0.5)
    torch.save(net.state_dict(), path)
    return str(path)


def _fid_closed_form(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID of two small feature sets (n, D), (m, D) with n, m << D: with centred X1, X2 the
    covariances are S_i = X_i^T X_i / (n_i - 1), and tr (S1 S2)^{1/2} is the nuclear norm of
    X1 X2^T / sqrt((n - 1)(m - 1)) (the nonzero eigenvalues of S1 S2 are those of
    X1 X2^T X2 X1^T / ((n - 1)(m - 1))): no D x D matrix square root."""
    x1, x2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n, m = len(f1), len(f2)
    cross = torch.linalg.svdvals(x1 @ x2.T).sum() / math.sqrt((n - 1) * (m - 1))
    mean_term = (f1.mean(0) - f2.mean(0)).square().sum()
    return float(mean_term + x1.square().sum() / (n - 1) + x2.square().sum() / (m - 1) - 2 * cross)


def _low_rank_trace_sqrt(sigma1: np.ndarray, sigma2: np.ndarray, rank: int = 16) -> float:
    """tr (S1 S2)^{1/2} exactly for S1 of rank <= `rank` (the covariance of a few samples): with
    S1 = Q B Q^T on an orthonormal basis Q of its range, the nonzero eigenvalues of
    S1^{1/2} S2 S1^{1/2} are those of B^{1/2} (Q^T S2 Q) B^{1/2}: no 2048 x 2048 eigh."""
    probe = np.random.default_rng(0).standard_normal((sigma1.shape[0], rank))
    q, _ = np.linalg.qr(sigma1 @ probe)
    w, v = np.linalg.eigh(q.T @ sigma1 @ q)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(half @ (q.T @ sigma2 @ q) @ half)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


@pytest.mark.parametrize("preprocessing", ["pytorch_fid", "tf1"])
def test_evaluate_fid_kid_is_with_random_inception_weights(digits_run, tmp_path, monkeypatch,
                                                           preprocessing):
    """The FID/KID/IS path of sde.evaluate: the samples are sde.sample's for the same seed
    (per-example seeds), FID and IS equal their closed forms on the same Inception features,
    made with eval.inception_preprocessing (whose reference statistics get a file of their own).
    Only the 2048 x 2048 matrix square root is swapped for an exact low-rank one (a minute
    on a loaded CPU; tests/metrics checks the real one, the slow test below runs it)."""
    import sde.metrics.fid
    from sde.metrics.fid import extract_features
    from sde.metrics.inception import WEIGHTS_FILE, load_inception

    monkeypatch.setattr(sde.metrics.fid, "trace_sqrt_product", _low_rank_trace_sqrt)

    reference = _image_folder(tmp_path / "images")
    weights = _random_inception(tmp_path / WEIGHTS_FILE)
    data = {"name": "folder", "root": str(tmp_path / "images"), "size": 8, "channels": 1,
            "shape": [1, 8, 8], "levels": 256}
    values = evaluate_run(digits_run, metrics=["fid", "kid", "is"], **FAST_PC, n=4, batch_size=6,
                          inception_weights=weights, inception_preprocessing=preprocessing,
                          kid_subsets=3, kid_subset_size=4, is_splits=1, data=data, seed=1,
                          progress=False)
    rec = sample_run(digits_run, **FAST_PC, n=4, seed=1, batch_size=3, out=tmp_path / "s.npz",
                     progress=False)
    samples = torch.from_numpy(np.load(rec["npz"])["samples"])
    net = load_inception(weights, preprocessing=preprocessing)
    f_samples, logits = extract_features(net, [samples])
    f_reference, _ = extract_features(net, [reference])
    expected_fid = _fid_closed_form(f_samples, f_reference)
    assert expected_fid > 1e-3  # informative features: a wrong sample or formula shows
    assert values["fid"] == pytest.approx(expected_fid, rel=1e-6, abs=0)
    p = logits.softmax(1)  # IS = exp(E_x KL(p(y|x) || p(y))), one split
    expected_is = math.exp(float((p * (p.log() - p.mean(0).log())).sum(1).mean()))
    assert values["is"] == pytest.approx(expected_is, rel=1e-9, abs=0) and expected_is > 1 + 1e-6
    assert np.isfinite(values["kid"]) and values["sample_n"] == 4
    suffix = "" if preprocessing == "pytorch_fid" else "_tf1"
    assert values["reference_stats"] == str(tmp_path / "images" / f"fid_stats_folder_8x8_train{suffix}.npz")
    assert Path(values["reference_stats"]).is_file()


@pytest.mark.slow
def test_evaluate_fid_kid_is_end_to_end(digits_run, tmp_path):
    """FID/KID/IS with random Inception weights against a small image folder; the reference
    statistics are cached next to the data and reused; W&B logs offline."""
    from sde.metrics.inception import WEIGHTS_FILE

    folder = tmp_path / "images"
    _image_folder(folder)
    _random_inception(tmp_path / WEIGHTS_FILE)
    data = {"name": "folder", "root": str(folder), "size": 8, "channels": 1, "shape": [1, 8, 8],
            "levels": 256}
    ev = {"batch_size": 6, "n": 4, "inception_weights": str(tmp_path / WEIGHTS_FILE),
          "reference_stats": None, "kid_subsets": 3, "kid_subset_size": 4, "is_splits": 2}
    kwargs = dict(run=str(digits_run), metrics=["fid", "kid", "is"], **FAST_PC, **ev, data=data,
                  progress=False)
    values = evaluate_run(**kwargs, logger={"backend": "wandb", "mode": "offline"})
    assert values["fid"] > 1e-3 and np.isfinite(values["kid"]) and values["is"] > 1
    cache = folder / "fid_stats_folder_8x8_train.npz"
    assert Path(values["reference_stats"]) == cache and cache.is_file()
    mtime = cache.stat().st_mtime_ns
    again = evaluate_run(**kwargs, logger={"backend": "none"})
    assert cache.stat().st_mtime_ns == mtime and again["fid"] == pytest.approx(values["fid"])
    assert (digits_run / "wandb").is_dir()
