"""2-D toy distributions, sampled from a `torch.Generator` (Gaussian mixture, checkerboard,
two moons, swiss roll). Each returns `(n, 2)` float32 with roughly unit scale."""

from __future__ import annotations

import math

import torch

from sde.oracle import GaussianMixture


def _rand(n, generator, *shape):
    return torch.rand((n, *shape), generator=generator, dtype=torch.float64)


def gaussian_mixture(n: int, generator=None, *, k: int = 8, radius: float = 2.0,
                     std: float = 0.2) -> torch.Tensor:
    """k equal Gaussians on a ring of `radius` (the oracle's `GaussianMixture.ring`)."""
    return GaussianMixture.ring(k, radius=radius, std=std).sample(n, generator)


def checkerboard(n: int, generator=None, *, squares: int = 4, size: float = 4.0) -> torch.Tensor:
    """Uniform on the dark squares of a `squares` x `squares` board of side `size`, centred."""
    cells = _rand(n, generator, 2) * (squares // 2)
    row = torch.floor(_rand(n, generator) * squares)
    col = 2 * torch.floor(cells[:, 0]) + (row % 2) + (cells[:, 0] % 1)
    xy = torch.stack([col, row + cells[:, 1] % 1], dim=1)  # (n, 2) in [0, squares)^2
    return (xy * (size / squares) - size / 2).float()


def two_moons(n: int, generator=None, *, noise: float = 0.05) -> torch.Tensor:
    """sklearn-style interleaving half circles, scaled to about [-2, 2]."""
    angle = _rand(n, generator) * math.pi
    upper = _rand(n, generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    xy = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5  # (n, 2)
    noise_ = torch.randn((n, 2), generator=generator, dtype=torch.float64) * noise
    return (xy + noise_).float()


def swiss_roll(n: int, generator=None, *, noise: float = 0.05) -> torch.Tensor:
    """The 2-D swiss roll r = phi, phi in [1.5 pi, 4.5 pi], scaled to about [-2, 2]."""
    phi = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    xy = torch.stack([phi * torch.cos(phi), phi * torch.sin(phi)], dim=1) / 7.0
    noise_ = torch.randn((n, 2), generator=generator, dtype=torch.float64) * noise
    return (xy + noise_).float()


TOY_SETS = {"gaussian_mixture": gaussian_mixture, "checkerboard": checkerboard,
            "two_moons": two_moons, "swiss_roll": swiss_roll}


def toy_data(dataset: str, n: int, seed: int = 0) -> torch.Tensor:
    """`n` points of the toy set `dataset`, the same for the same seed, (n, 2)."""
    if dataset not in TOY_SETS:
        raise ValueError(f"unknown toy dataset {dataset!r}; choose one of {sorted(TOY_SETS)}")
    return TOY_SETS[dataset](n, torch.Generator().manual_seed(seed))


def mixture_data(mixture: dict, n: int, seed: int = 0) -> torch.Tensor:
    """`n` exact samples (float32) of `GaussianMixture(**mixture)` (keys means, stds, weights):
    the data of a run distilled from an oracle teacher (`data.name: oracle`)."""
    unknown = set(mixture) - {"means", "stds", "weights"}
    if "means" not in mixture or unknown:
        raise ValueError(f"data.mixture needs means (and optionally stds, weights), got keys "
                         f"{sorted(mixture)}")
    return GaussianMixture(**mixture).sample(n, torch.Generator().manual_seed(seed)).float()
