"""Class-conditional sampling through sde.runs.sample_run / python -m sde.sample."""

import numpy as np
import pytest
import torch

from sde.runs.load import load_run
from sde.runs.sampling import class_score_fn, parse_labels, sample_run


def test_parse_labels():
    assert parse_labels(None, 5, 10) is None
    assert parse_labels(3, 4, 10).tolist() == [3, 3, 3, 3]
    y = parse_labels("all", 20, 10)
    assert y.tolist() == [c for c in range(10) for _ in range(2)]  # two of each, in blocks
    assert torch.bincount(parse_labels("all", 25, 10), minlength=10).tolist() in (
        [3, 2, 3, 2, 3, 2, 3, 2, 3, 2], [2, 3] * 5, sorted([3, 2] * 5))
    with pytest.raises(ValueError, match="integer in"):
        parse_labels(10, 4, 10)
    with pytest.raises(ValueError, match="class-conditional run"):
        parse_labels(1, 4, None)


def test_guidance_zero_is_the_conditional_network(cond_run):
    run = load_run(cond_run, device="cpu")
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
    y = torch.tensor([0, 3, 3, 9])
    # independent truth: the network with these labels, eps -> score = -eps / std
    std = run.sde.marginal_prob(x, t)[1]
    eps = run.model(x, 999.0 * t, class_labels=y)
    truth = -eps / std[:, None, None, None]
    torch.testing.assert_close(class_score_fn(run, y, 0.0)(0, 4)(x, t), truth)
    null = run.model(x, 999.0 * t, class_labels=torch.full((4,), 10))
    w = 2.0
    guided = -((1 + w) * eps - w * null) / std[:, None, None, None]
    torch.testing.assert_close(class_score_fn(run, y, w)(0, 4)(x, t), guided)
    # the labels of a later batch are that batch's
    torch.testing.assert_close(class_score_fn(run, y, 0.0)(2, 4)(x[2:], t[2:]), truth[2:])


def test_sample_every_label(cond_run, tmp_path):
    out = tmp_path / "s.npz"
    record = sample_run(cond_run, sampler="pc", sampler_options={"steps": 25}, n=20,
                        batch_size=8, out=out, device="cpu", progress=False, label="all",
                        guidance=1.0)
    arrays = np.load(out)
    assert arrays["samples"].shape == (20, 1, 8, 8) and np.isfinite(arrays["samples"]).all()
    assert arrays["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert record["label"] == "all" and record["guidance"] == 1.0


def test_guidance_without_label_is_a_clear_error(cond_run, tmp_path):
    with pytest.raises(ValueError, match="label=C"):
        sample_run(cond_run, n=2, guidance=1.0, out=tmp_path / "x.npz", device="cpu")
    with pytest.raises(ValueError, match="guidance must be"):
        sample_run(cond_run, n=2, label=1, guidance=-1.0, out=tmp_path / "x.npz", device="cpu")


@pytest.mark.slow  # a python -m sde.sample process: ~10-50 s on 2 busy cores
def test_cli_label(cond_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli.npz"
    subprocess.run([sys.executable, "-m", "sde.sample", f"run={cond_run}", "label=7",
                    "guidance=2", "n=3", "sampler.steps=25", f"out={out}", "progress=false",
                    "device=cpu"], check=True, capture_output=True, text=True)
    assert np.load(out)["labels"].tolist() == [7, 7, 7]
