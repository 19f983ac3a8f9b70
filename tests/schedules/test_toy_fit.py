"""Toy experiments must fit, not just run (slow): trained with their defaults on a 3-mode 2-D
Gaussian mixture in [-1, 1]^2 with mode stds 0.05-0.12 (`data=npz`), the run's own sampler gives
mode weights within 0.03 and per-mode spreads within 10 %, and the NLL is within 0.1 nats of the
mixture's closed form.

`fit_report(run_dir)` is also what the numbers in docs/schedules.md were measured with:

    python tests/schedules/test_toy_fit.py RUN_DIR
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from sde.oracle import GaussianMixture

MIX = GaussianMixture([[-0.55, -0.45], [0.5, -0.35], [0.05, 0.55]], [0.05, 0.08, 0.12],
                      [0.5, 0.3, 0.2])


def mode_stats(x: torch.Tensor):
    """Per-mode weights and spread ratios sqrt(E|x - mu_k|^2 / (2 s_k^2)) of samples (n, 2)."""
    x = x.double()
    sq = ((x[:, None] - MIX.means[None]) ** 2).sum(-1)  # (n, K)
    var = MIX.stds[:, 0] ** 2
    labels = (torch.log(MIX.weights) - 0.5 * sq / var - torch.log(var)).argmax(1)
    weights = torch.stack([(labels == k).double().mean() for k in range(3)])
    spreads = torch.stack([(sq[labels == k, k].mean() / (2 * var[k])).sqrt() for k in range(3)])
    return weights, spreads


def fit_report(run_dir, n_samples: int = 4000, n_nll: int = 512, seed: int = 0,
               sampler: dict | None = None) -> dict:
    """Samples with the run's sampler (updated by `sampler`) and the NLL (exact divergence) on
    fresh mixture points."""
    from sde import load_run
    from sde.likelihood import log_likelihood
    from sde.sampling.registry import get_sampler

    run = load_run(run_dir)
    options = {**run.config["sampler"], **(sampler or {})}
    name = options.pop("name")
    x, _ = get_sampler(name)(run.sde, run.score_fn, (n_samples, 2),
                             generator=torch.Generator().manual_seed(seed), **options)
    x = run.inverse_scaler(x)
    weights, spreads = mode_stats(x)
    data = MIX.sample(n_nll, torch.Generator().manual_seed(seed + 1))
    nll = []
    for batch in data.split(256):
        logp, _, _ = log_likelihood(run.sde, run.score_fn, run.scaler(batch), hutchinson="exact",
                                    eps=1e-5)
        nll.append(-logp.double())  # the toy data are used unscaled (identity scaler)
    nll = torch.cat(nll)
    exact = -MIX.log_prob(data.double())
    gap = nll - exact
    return {"weights": weights.tolist(), "weight_error": (weights - MIX.weights).abs().max().item(),
            "spreads": spreads.tolist(), "spread_error": (spreads - 1).abs().max().item(),
            "nll": nll.mean().item(), "nll_exact": exact.mean().item(),
            "nll_gap": gap.mean().item(), "nll_gap_se": (gap.std() / math.sqrt(len(gap))).item()}


EXPERIMENTS = {"vp_toy": ["experiment=vp_toy"], "ve_toy": ["experiment=ve_toy"],
               "edm_toy": ["experiment=edm_toy"],
               "vp_toy_cosine_v": ["experiment=vp_toy", "sde=cosine", "score.prediction=v"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_toy_experiment_fits_the_mixture(name, tmp_path):
    from sde.train import run

    from .conftest import compose_train

    path = tmp_path / "mix.npz"
    np.savez(path, x=MIX.sample(50000, torch.Generator().manual_seed(0)).numpy())
    overrides = [*EXPERIMENTS[name], "data=npz", f"data.path={path}", "logger=none",
                 "trainer.progress=false"]
    run(compose_train(overrides), tmp_path / "run")
    report = fit_report(tmp_path / "run")
    assert report["weight_error"] <= 0.03, report
    assert report["spread_error"] <= 0.10, report
    assert abs(report["nll_gap"]) <= 0.1, report


if __name__ == "__main__":  # RUN_DIR [sampler.key=value ...]
    overrides = dict(a.split("=", 1) for a in sys.argv[2:])
    print(fit_report(sys.argv[1], sampler={k: int(v) if v.isdigit() else v
                                           for k, v in overrides.items()}))
