"""Evaluation of low-dimensional (toy) data: two-sample distances, a density grid from the
model's likelihood, the states a sampler visits, and their figures (headless matplotlib)."""

from __future__ import annotations

from pathlib import Path

import torch

from sde.metrics.two_sample import energy_distance, mmd_rbf


def sample_distances(samples: torch.Tensor, held_out: torch.Tensor) -> dict[str, float]:
    """Squared energy distance and RBF-MMD^2 (median bandwidth) between samples (N, D) and
    held-out data (M, D); both are zero in expectation when the distributions agree."""
    samples, held_out = samples.flatten(1).double(), held_out.flatten(1).double()
    return {"energy_distance": energy_distance(samples, held_out),
            "mmd_rbf": mmd_rbf(samples, held_out)}


def affine_log_det(scaler, dim: int) -> float:
    """log |det J| of an element-wise affine scaler (data -> model space) on `dim` coordinates:
    dim * log |scaler(1) - scaler(0)|, so that log p_data(x) = log p_model(scaler(x)) + this."""
    one, zero = scaler(torch.ones(1, dim)), scaler(torch.zeros(1, dim))
    return float(torch.log((one - zero).abs().double()).sum())


def grid_points(lim: float | tuple[float, float, float, float], resolution: int) -> tuple:
    """A (resolution^2, 2) grid over [x0, x1] x [y0, y1] (or [-lim, lim]^2) and its extent."""
    x0, x1, y0, y1 = (-lim, lim, -lim, lim) if isinstance(lim, (int, float)) else lim
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1), (x0, x1, y0, y1)


def density_grid(log_prob_fn, *, lim=4.0, resolution: int = 64,
                 batch_size: int = 1024) -> tuple[torch.Tensor, tuple]:
    """log p(x) (resolution, resolution) on a 2-D grid, row i at y_i, from `log_prob_fn(x (B, 2))
    -> (B,)` (e.g. the probability-flow likelihood in data space), evaluated in batches."""
    points, extent = grid_points(lim, resolution)
    logp = torch.cat([log_prob_fn(p).detach().double().cpu()
                      for p in torch.split(points, batch_size)])
    return logp.reshape(resolution, resolution), extent


class RecordingScore:
    """Wraps `score_fn(x, t)` and records the states it is evaluated at (first `keep` examples),
    so that any sampler's path can be plotted without touching the sampler."""

    def __init__(self, score_fn, keep: int = 16):
        self.score_fn, self.keep = score_fn, keep
        self.states: list[torch.Tensor] = []
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.states.append(x[: self.keep].detach().flatten(1).cpu())
        self.times.append(float(t.flatten()[0]))
        return self.score_fn(x, t)

    def trajectories(self, final: torch.Tensor | None = None) -> torch.Tensor:
        """States (K, steps, D) in call order, with `final` (the returned samples) appended."""
        states = list(self.states)
        if final is not None:
            states.append(final[: self.keep].detach().flatten(1).cpu())
        return torch.stack(states, dim=1)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    return plt, fig, ax


def save_density(logp: torch.Tensor, extent: tuple, path, *, title: str = "") -> Path:
    """Heatmap of the density exp(logp) on a grid (R, R) covering `extent` (x0, x1, y0, y1)."""
    plt, fig, ax = _figure()
    ax.imshow(logp.exp().cpu().numpy(), origin="lower", extent=extent, cmap="viridis")
    ax.set_title(title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def save_trajectories(paths: torch.Tensor, path, *, title: str = "") -> Path:
    """Sampler paths (K, steps, 2) from the prior (circle) to the sample (dot)."""
    plt, fig, ax = _figure()
    p = paths.detach().cpu()
    for k in range(p.shape[0]):
        ax.plot(p[k, :, 0], p[k, :, 1], lw=0.6, alpha=0.7)
        ax.scatter(p[k, 0, 0], p[k, 0, 1], s=12, facecolors="none", edgecolors="0.3")
        ax.scatter(p[k, -1, 0], p[k, -1, 1], s=12, c="k")
    ax.set_aspect("equal")
    ax.set_title(title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
