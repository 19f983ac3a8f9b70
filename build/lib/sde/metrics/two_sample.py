"""Two-sample distances between sample sets (B, ...), for toy data and sampler benchmarks."""

from __future__ import annotations

import torch


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (n, m) between rows of a (n, D) and b (m, D), in float64."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013), unbiased
    within-set terms; zero in expectation when x and y share a distribution."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("energy_distance needs at least 2 samples per set")
    xy = _pairwise(x, y).mean()
    xx = _pairwise(x, x).sum() / (n * (n - 1))
    yy = _pairwise(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel exp(-|a-b|^2 / (2 h^2)); h defaults to the
    median pairwise distance of the pooled samples (the median heuristic)."""
    n, m = x.shape[0], y.shape[0]
    d_xx, d_yy, d_xy = _pairwise(x, x), _pairwise(y, y), _pairwise(x, y)
    if bandwidth is None:
        bandwidth = float(torch.cat([d_xx.flatten(), d_yy.flatten(), d_xy.flatten()]).median())
    k = lambda d: torch.exp(-(d**2) / (2 * bandwidth**2))
    k_xx = (k(d_xx).sum() - n) / (n * (n - 1))
    k_yy = (k(d_yy).sum() - m) / (m * (m - 1))
    return float(k_xx + k_yy - 2 * k(d_xy).mean())
