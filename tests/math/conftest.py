"""Shared pieces of the math tests: a 2-D Gaussian mixture and statistical checks of samples.

Tolerances are `4 standard errors + a discretisation allowance`: 4 SE makes a false alarm from
sampling noise alone about 1e-4 per check (the seeds are fixed anyway, so the tests are
deterministic), and the allowance covers the O(1/N) bias of the sampler at the step count used,
measured with 20 000 samples and stated where it is set.
"""

from __future__ import annotations

import math

import pytest
import torch

from sde.metrics.two_sample import energy_distance
from sde.oracle import GaussianMixture

# Three unequal, well-separated modes (nearest distance 3.2, i.e. >= 6 stds of the widest mode),
# so labelling a sample by its most likely mode misassigns a fraction < 1e-6 of them.
MEANS = [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]
STDS = [0.3, 0.5, 0.4]
WEIGHTS = [0.5, 0.3, 0.2]

# Energy distance between two independent exact sample sets of 2000 points each (200 pairs
# measured): mean 4e-5, std 1.9e-3, 99th percentile 5.5e-3, max 1.2e-2; at 4000 (100 pairs):
# std 1.3e-3, 99th percentile 3.7e-3, max 5.6e-3 (it scales as 1/n). Errors
# of 0.05 in two weights give 8.5e-3, but +10 % on every spread only 4e-4: ED is a coarse net
# for weights and gross failures, so weights and spreads are also checked directly.
ED_MAX = {2000: 1.2e-2, 4000: 6e-3}


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    return GaussianMixture(MEANS, STDS, WEIGHTS)


def mode_stats(mix: GaussianMixture, x: torch.Tensor, alpha: float = 1.0, std: float = 0.0):
    """Per-mode weights (K,), spread ratios (K,) and counts (K,) of samples x (n, D) of p_t, where
    p_t has modes alpha mu_k with variances alpha^2 s_k^2 + std^2 (isotropic modes only)."""
    x = x.double().flatten(1)
    mean = alpha * mix.means.flatten(1)  # (K, D)
    var = alpha**2 * mix.stds.flatten(1)[:, 0] ** 2 + std**2  # (K,)
    sq = ((x[:, None, :] - mean[None]) ** 2).sum(-1)  # (n, K)
    log_joint = torch.log(mix.weights) - 0.5 * sq / var - 0.5 * x.shape[1] * torch.log(var)
    labels = log_joint.argmax(1)
    counts = torch.bincount(labels, minlength=mix.num_components)
    spread = torch.stack([
        (sq[labels == k, k].mean() / (x.shape[1] * var[k])).sqrt() for k in range(len(var))
    ])
    return counts.double() / x.shape[0], spread, counts


def check_mixture(mix, x, *, alpha=1.0, std=0.0, weight_bias=0.0, spread_bias=0.0,
                  reference=None, ed_max=None):
    """Assert that samples x reproduce the mixture p_t: each weight within 4 SE
    (sqrt(w (1 - w) / n)) + weight_bias; each per-mode spread ratio sqrt(E|x - m_k|^2 / (D v_k))
    and the pooled one within 4 SE (1 / sqrt(2 n_k D), chi-square) + spread_bias of 1; and,
    given exact `reference` samples, the energy distance below ed_max."""
    assert torch.isfinite(x).all()
    n, d = x.shape[0], x[0].numel()
    w_hat, spread, counts = mode_stats(mix, x, alpha, std)
    for k, w in enumerate(mix.weights.tolist()):
        tol_w = 4 * math.sqrt(w * (1 - w) / n) + weight_bias
        assert abs(w_hat[k] - w) <= tol_w, f"mode {k}: weight {w_hat[k]:.4f} vs {w} ({tol_w:.4f})"
        tol_s = 4 / math.sqrt(2 * counts[k].item() * d) + spread_bias
        assert abs(spread[k] - 1) <= tol_s, f"mode {k}: spread {spread[k]:.4f} (tol {tol_s:.4f})"
    pooled = (counts * spread**2).sum().div(n).sqrt()
    tol_p = 4 / math.sqrt(2 * n * d) + spread_bias
    assert abs(pooled - 1) <= tol_p, f"pooled spread {pooled:.4f} (tol {tol_p:.4f})"
    if reference is not None:
        ed = energy_distance(x, reference[: len(x)])
        assert ed <= ed_max, f"energy distance {ed:.5f} > {ed_max}"


@pytest.fixture(scope="session")
def reference(mixture) -> torch.Tensor:
    """4000 exact samples of the data distribution (seed fixed)."""
    return mixture.sample(4000, torch.Generator().manual_seed(12345))


@pytest.fixture(scope="session")
def check():
    """`check_mixture` as a fixture (test modules cannot import conftest under importlib mode)."""
    return check_mixture


@pytest.fixture(scope="session")
def stats():
    """`mode_stats` as a fixture."""
    return mode_stats
