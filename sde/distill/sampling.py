"""Sampling a distilled student in K steps on the nested grid t_i = T (1 - i / K), i = 0..K.

The grid ends at the clean end t_K = 0 (alpha = 1, std = 0), so K steps cost K network calls
and the last returns the student's x0. Halving K keeps every other point, which is what
progressive distillation needs (two teacher steps t_i -> t_i+1/2 -> t_i+1 = one student step).

noise="ddim": deterministic DDIM steps (Song et al. 2021a, Eq. 12 with eta = 0), the sampler a
progressively distilled student was trained for (Salimans & Ho 2022, Algorithm 2).
noise="fresh": multistep consistency sampling (Song et al. 2023, Algorithm 1): each step maps to
x0, then draws x_{t_i+1} = alpha x0 + std z afresh; also how ADD students sample (Sauer et al.
2023, Sec. 4).
"""

from __future__ import annotations

import torch

from sde.models import get_denoiser_fn
from sde.utils import CountedScore, append_dims, batch_time, randn_like

NOISES = ("ddim", "fresh")


def student_grid(sde, steps: int) -> torch.Tensor:
    """The K + 1 times T (1 - i / K), i = 0..K (float64); the last is the clean end 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return float(sde.T) * (1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps)


def coeffs(sde, t: torch.Tensor):
    """(alpha(t), std(t)) with the clean end t = 0 given exactly as (1, 0)."""
    alpha, std = sde.marginal_coeffs(t)
    clean = t == 0
    return torch.where(clean, torch.ones_like(alpha), alpha), torch.where(
        clean, torch.zeros_like(std), std)


def ddim_step(sde, x, x0, t, s):
    """DDIM from t to s given the x0 estimate: x_s = alpha_s x0 + std_s (x_t - alpha_t x0) / std_t."""
    (a_t, s_t), (a_s, s_s) = coeffs(sde, t.to(x.dtype)), coeffs(sde, s.to(x.dtype))
    a_t, s_t, a_s, s_s = (append_dims(v, x.ndim) for v in (a_t, s_t, a_s, s_s))
    return a_s * x0 + s_s * (x - a_t * x0) / s_t


def renoise(sde, x0, s, generator=None):
    """x_s = alpha_s x0 + std_s z, z ~ N(0, I) (a fresh draw of p_0s(. | x0))."""
    a_s, s_s = coeffs(sde, s.to(x0))
    return append_dims(a_s, x0.ndim) * x0 + append_dims(s_s, x0.ndim) * randn_like(x0, generator)


@torch.no_grad()
def sample_with_denoiser(sde, denoiser, shape, *, steps: int, noise: str = "ddim",
                         generator=None, device=None, dtype=torch.float32):
    """K steps of `denoiser(x, t) -> x0` from x_T ~ prior -> (x0, nfe = K)."""
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {list(NOISES)}")
    ts = student_grid(sde, steps)
    x = sde.prior_sampling(shape, generator, device=device, dtype=dtype)  # (B, ...)
    for i in range(steps):
        t, s = batch_time(ts[i].item(), x), batch_time(ts[i + 1].item(), x)
        x0 = denoiser(x, t)
        if i == steps - 1:
            return x0, steps
        x = ddim_step(sde, x, x0, t, s) if noise == "ddim" else renoise(sde, x0, s, generator)


def distilled_sample(sde, score_fn, shape, *, steps, grid="uniform", eps=1e-3, noise=None,
                     generator=None, device=None, dtype=torch.float32):
    """`get_sampler("distilled")`: a student (or any score_fn) in `steps` steps on the nested
    grid -> (x, nfe = steps). x0 = (x + std^2 score) / alpha (Tweedie). `eps` is unused (the grid
    ends at the clean end; its smallest evaluated time is T / steps); only grid="uniform";
    noise None is "ddim" (`sde.sample` fills in a distilled run's own)."""
    if grid not in ("uniform", None):
        raise ValueError(f"the distilled sampler steps on T (1 - i / K); grid must be 'uniform', "
                         f"got {grid!r}")
    counted = CountedScore(score_fn)
    x, nfe = sample_with_denoiser(sde, get_denoiser_fn(sde, counted), shape, steps=steps,
                                  noise=noise or "ddim", generator=generator, device=device,
                                  dtype=dtype)
    counted.check(x, what="distilled_sample")
    return x, nfe
