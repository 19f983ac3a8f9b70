"""Optimised time grids: "Align Your Steps" (Sabour et al. 2024) for a given score function and
number of steps.

In y = x / alpha and sigma = std / alpha (see `sde.sampling.grids`), the reverse SDE is
dy = 2 (y - D(y, sigma)) / sigma dsigma + sqrt(2 sigma) dw (sigma decreasing). A sampler that
holds the denoiser D at its value at the start sigma_i of each step has, by Girsanov, a KL
divergence to the true reverse process bounded by (AYS, Eq. 6-8 in our variables)

    KLUB = sum_i int_{sigma_{i+1}}^{sigma_i} E || D(y_s, s) - D(y_{sigma_i}, sigma_i) ||^2 / s^3 ds,

with y_s = x_0 + s z and y_{sigma_i} = y_s + sqrt(sigma_i^2 - s^2) z' on one forward path. The
grid minimising it (end points fixed at T and eps) is found by coordinate descent: each
interior point moves, by golden-section search in log sigma between its neighbours, to the
minimum of its two intervals' terms. The expectation uses fixed draws (x_0 from data, z, z'), so
the objective is a smooth deterministic function of the grid. Computed once per score function
and number of steps; pass the result as `times=` with `grid="optimized"` to any grid sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sde.sampling.grids import get_time_grid, sigma_of, t_of_sigma
from sde.utils import append_dims, randn

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class KLBound:
    """The KLUB terms of single intervals [s_lo, s_hi] with fixed Monte Carlo draws: x0 (n, ...)
    data in model space, `nodes` Gauss-Legendre points per interval in log sigma."""

    def __init__(self, sde, score_fn, x0: torch.Tensor, *, nodes: int = 4, generator=None):
        self.sde, self.score_fn = sde, score_fn
        self.dtype = x0.dtype  # the score function's dtype (a float32 network); the bound is float64
        self.x0 = x0.to(torch.float64)
        u, w = np.polynomial.legendre.leggauss(nodes)
        self.u = torch.tensor(0.5 * (u + 1.0), dtype=torch.float64)  # (K,) in [0, 1]
        self.w = torch.tensor(0.5 * w, dtype=torch.float64)
        shape = (nodes * x0.shape[0], *x0.shape[1:])
        self.z1, self.z2 = (randn(shape, generator, dtype=torch.float64) for _ in range(2))

    def denoise(self, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(y, sigma) = (x + std^2 score(x, t)) / alpha, x = alpha y, t = t(sigma) (Tweedie)."""
        t = t_of_sigma(self.sde, sigma)  # (B,)
        alpha, std = (append_dims(c, y.ndim) for c in self.sde.marginal_coeffs(t))
        x = alpha * y
        score = self.score_fn(x.to(self.dtype), t.to(self.dtype)).to(torch.float64)
        return y + std**2 / alpha * score

    def term(self, s_lo: float, s_hi: float) -> float:
        """int_{s_lo}^{s_hi} E ||D(y_s, s) - D(y_hi, s_hi)||^2 / s^3 ds (per example, summed over
        dimensions), by Gauss-Legendre in log s."""
        n, k = self.x0.shape[0], self.u.shape[0]
        log_ratio = math.log(s_hi / s_lo)
        s = s_lo * torch.exp(self.u * log_ratio)  # (K,)
        s_rows = s.repeat_interleave(n)  # (K n,)
        x0 = self.x0.repeat(k, *([1] * (self.x0.ndim - 1)))
        y_s = x0 + append_dims(s_rows, x0.ndim) * self.z1
        y_hi = y_s + append_dims((s_hi**2 - s_rows**2).clamp_min(0).sqrt(), x0.ndim) * self.z2
        diff = self.denoise(y_s, s_rows) - self.denoise(y_hi, torch.full_like(s_rows, s_hi))
        sq = diff.flatten(1).pow(2).sum(1).reshape(k, n).mean(1)  # (K,)
        return float((self.w * sq / s**3 * s * log_ratio).sum())  # ds = s log_ratio du

    def total(self, sigmas: list[float]) -> float:
        """KLUB of a decreasing grid of noise levels (the last step to sigma = 0 is exact)."""
        return sum(self.term(lo, hi) for hi, lo in zip(sigmas[:-1], sigmas[1:]))


def kl_upper_bound(sde, score_fn, times, x0: torch.Tensor, *, nodes: int = 4,
                   generator=None) -> float:
    """The KLUB above of the grid `times` (decreasing from T to eps), with data samples x0."""
    sigmas = sigma_of(sde, torch.as_tensor(times, dtype=torch.float64)).tolist()
    return KLBound(sde, score_fn, x0, nodes=nodes, generator=generator).total(sigmas)


def _golden_min(f, lo: float, hi: float, iters: int) -> float:
    """Golden-section search for a minimum of f on [lo, hi]."""
    a, b = lo, hi
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return c if fc < fd else d


def optimize_grid(sde, score_fn, steps: int, x0: torch.Tensor, *, eps: float = 1e-3,
                  init: str = "logsnr", sweeps: int = 4, iters: int = 12, nodes: int = 4,
                  generator=None) -> torch.Tensor:
    """Align Your Steps (Sabour et al. 2024): `steps` decreasing times from T to eps (float64)
    that minimise the KLUB for `score_fn`, starting from the `init` grid -> times. `x0` (n, ...):
    data samples in model space (a few hundred suffice); costs 4 sweeps (steps - 2) (iters + 2)
    score calls on batches of nodes * n. Use it as `get_sampler(name)(..., grid="optimized",
    times=times)`."""
    times = get_time_grid(sde, steps, init, eps=eps)
    if steps <= 2:
        return times
    bound = KLBound(sde, score_fn, x0, nodes=nodes, generator=generator)
    log_s = torch.log(sigma_of(sde, times)).tolist()
    for sweep in range(sweeps):
        order = range(1, steps - 1) if sweep % 2 == 0 else range(steps - 2, 0, -1)
        for i in order:
            def local(v, i=i):
                return (bound.term(math.exp(v), math.exp(log_s[i - 1]))
                        + bound.term(math.exp(log_s[i + 1]), math.exp(v)))
            margin = 1e-3 * (log_s[i - 1] - log_s[i + 1])
            log_s[i] = _golden_min(local, log_s[i + 1] + margin, log_s[i - 1] - margin, iters)
    out = t_of_sigma(sde, torch.exp(torch.tensor(log_s, dtype=torch.float64)))
    out[0], out[-1] = sde.sampling_T, eps  # exact end points (the inverse maps round)
    return out
