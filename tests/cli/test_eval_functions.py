"""The library side of sde.sample / sde.evaluate against the exact Gaussian-mixture oracle."""

import math
from types import SimpleNamespace

import pytest
import torch

from sde import VPSDE
from sde.likelihood import dequantize
from sde.oracle import GaussianMixture
from sde.runs.env import sample_seeds, stream_generator
from sde.runs.evaluate import LIKELIHOOD_STREAM, check_metrics, default_metrics, likelihood_metric
from sde.runs.sampling import generate


def oracle_run(gm, sde, *, centered=False, shape=(2,)):
    scaler = (lambda y: 2 * y - 1) if centered else (lambda y: y)
    inverse = (lambda x: (x + 1) / 2) if centered else (lambda x: x)
    return SimpleNamespace(sde=sde, score_fn=gm.score_fn(sde), scaler=scaler,
                           inverse_scaler=inverse, config={"data": {"shape": list(shape)}})


@pytest.mark.parametrize("name,options", [
    ("pc", {"steps": 50, "corrector": "ald"}),
    ("pc", {"steps": 50, "corrector": "none", "predictor": "euler_maruyama"}),
    ("ddim", {"steps": 8, "eta": 1.0}),
])
def test_samples_do_not_depend_on_batch_size(name, options):
    """One generator per sample. (The `langevin` corrector is excluded: its step size averages
    norms over the batch, as in score_sde.)"""
    sde, gm = VPSDE(N=10), GaussianMixture.ring(k=4)
    runs = [generate(name, sde, gm.score_fn(sde), (2,), seeds=sample_seeds(3, 7), batch_size=b,
                     options=options, progress=False)[0] for b in (7, 3, 1)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other_seed = generate(name, sde, gm.score_fn(sde), (2,), seeds=sample_seeds(4, 7),
                          batch_size=7, options=options, progress=False)[0]
    assert not torch.allclose(runs[0], other_seed)
    assert sample_seeds(3, 2) == [3_000_000, 3_000_001]


def test_nll_matches_the_oracle_density():
    sde, gm = VPSDE(), GaussianMixture.ring(k=4, std=0.3)
    x = gm.sample(6, torch.Generator().manual_seed(0))
    out = likelihood_metric(oracle_run(gm, sde), x, {"name": "toy", "levels": None},
                            batch_size=4, repeats=1, hutchinson="auto", rtol=1e-6, atol=1e-6,
                            eps=1e-5, seed=0, device="cpu", progress=False)
    assert out["nll"] == pytest.approx(float(-gm.log_prob(x.double()).mean()), abs=2e-3)
    assert out["nll_n"] == 6 and out["nll_nfe"] > 0


def test_bpd_dequantizes_scales_and_offsets_like_the_closed_form():
    """Centered 8-bit 'images' (1, 2, 2): bpd = -log p(2 (k + u) / 256 - 1) / (4 ln 2) + 7."""
    sde = VPSDE()
    gm = GaussianMixture(torch.zeros(1, 1, 2, 2, dtype=torch.float64), 0.5)
    k = torch.randint(0, 256, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    data = {"name": "fake", "levels": 256, "centered": True}
    out = likelihood_metric(oracle_run(gm, sde, centered=True, shape=(1, 2, 2)), k, data,
                            batch_size=8, repeats=1, hutchinson="auto", rtol=1e-6, atol=1e-6,
                            eps=1e-5, seed=5, device="cpu", progress=False)
    g = stream_generator(5, 0, 0, LIKELIHOOD_STREAM)  # repeat 0, batch 0
    x = 2 * dequantize(k, g, centered=False, n_bits=8) - 1
    expected = -gm.log_prob(x.double()) / (4 * math.log(2)) + 7
    assert out["bpd"] == pytest.approx(float(expected.mean()), abs=2e-3)


def test_metric_defaults_and_checks():
    images = {"name": "digits", "levels": 17, "shape": [1, 8, 8]}
    toy = {"name": "checkerboard", "levels": None, "shape": [2]}
    assert default_metrics(images) == ["bpd"]
    assert default_metrics(toy) == ["nll", "toy"]
    assert default_metrics({"name": "npz", "levels": None, "shape": [5]}) == ["nll"]
    with pytest.raises(ValueError, match="nll"):
        check_metrics(["bpd"], toy)
    with pytest.raises(ValueError, match="images"):
        check_metrics(["fid"], toy)
    with pytest.raises(ValueError, match="unknown metrics"):
        check_metrics(["fdi"], images)
