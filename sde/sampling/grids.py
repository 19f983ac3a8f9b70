"""Time grids for the fast samplers, built from the SDE's own alpha(t), std(t) and log-SNR.

Every SDE here has the kernel x_t = alpha(t) x_0 + std(t) z, so y = x / alpha follows the
variance-exploding ODE of Karras et al. (2022, Eq. 4 with s = 1) in the noise level
sigma(t) = std(t) / alpha(t) = exp(-lambda(t) / 2), lambda = log-SNR. A grid is a decreasing
tensor of `steps` times t_0 = T > ... > t_{steps-1} = eps at which a sampler evaluates the score;
the samplers then take one last step from t = eps to sigma = 0, which for every solver here is
the jump to the denoised x_0 = (x + std^2 score) / alpha (the limit of its update as
sigma_next -> 0, Karras et al. 2022, Algorithm 1-2 with sigma_N = 0). So `steps` grid times give
`steps` steps and no noise is left over.
"""

from __future__ import annotations

import math

import torch

from sde.utils import check_eps

FORMULA_GRIDS = ("uniform", "logsnr", "edm", "quadratic")
GRIDS = (*FORMULA_GRIDS, "trailing", "optimized")  # "optimized": stored times from `optimize_grid`


def check_grid_args(sde, steps: int, eps: float, grid: str, rho: float = 7.0) -> None:
    """Raise a ValueError naming the bad argument of a time grid."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    check_eps(sde, eps)
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; known grids: {', '.join(GRIDS)}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")


def sigma_of(sde, t: torch.Tensor) -> torch.Tensor:
    """Noise level sigma(t) = std(t) / alpha(t) of y = x / alpha (float64)."""
    alpha, std = sde.marginal_coeffs(torch.as_tensor(t, dtype=torch.float64))
    return std / alpha


def t_of_sigma(sde, sigma: torch.Tensor) -> torch.Tensor:
    """Time with noise level sigma, through the SDE's inverse log-SNR (lambda = -2 log sigma)."""
    return sde.t_from_log_snr(-2.0 * torch.log(torch.as_tensor(sigma, dtype=torch.float64)))


def check_stored_grid(sde, steps: int, eps: float, times) -> torch.Tensor:
    """`times` as a float64 tensor, or a ValueError unless it is a grid of `steps` strictly
    decreasing times from `sde.sampling_T` to eps (what `optimize_grid` returns)."""
    if times is None:
        raise ValueError("grid='optimized' needs times=...: compute them once with "
                         "sde.sampling.optimize_grid(sde, score_fn, steps, x0) and pass them")
    t = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
    if t.shape != (steps,):
        raise ValueError(f"the stored grid has {t.numel()} times but the sampler needs {steps} "
                         f"(steps, or steps + 1 with denoise_to_zero=False); recompute it with "
                         f"optimize_grid for that many times")
    T = sde.sampling_T
    if not (abs(t[0].item() - T) < 1e-9 and abs(t[-1].item() - eps) < 1e-9
            and bool((t.diff() < 0).all())):
        raise ValueError(f"the stored grid must decrease strictly from T={T} to eps={eps}, "
                         f"got {t.tolist()}")
    return t


def get_time_grid(sde, steps: int, grid: str = "uniform", *, eps: float = 1e-3,
                  rho: float = 7.0, times=None) -> torch.Tensor:
    """`steps` decreasing times from T to eps (float64), spaced by `grid`:

    - "uniform": uniform in t (DDIM's skip schedule, Song et al. 2021a);
    - "logsnr": uniform in lambda(t) (DPM-Solver, Lu et al. 2022, Sec. 3.3);
    - "edm": uniform in sigma^(1/rho) (Karras et al. 2022, Eq. 5), mapped back to t through
      the SDE's `t_from_log_snr`;
    - "quadratic": uniform in sqrt(t) (DPM-Solver's "time_quadratic");
    - "trailing": Lin et al. (2024, Sec. 3.4) "trailing" spacing, T - k (T - eps) / steps: uniform
      steps anchored at T that end one step above eps (the sampler's final jump covers it).

    Grids start at `sde.sampling_T` (T unless alpha(T) = 0).

    - "optimized": the stored `times` (from `optimize_grid`), checked and returned.

    The last step of every sampler goes from eps to sigma = 0 (see the module docstring).
    """
    check_grid_args(sde, steps, eps, grid, rho)
    if grid == "optimized" or times is not None:
        if grid != "optimized":
            raise ValueError(f"times=... is the stored grid of grid='optimized', not {grid!r}")
        return check_stored_grid(sde, steps, eps, times)
    T = float(sde.sampling_T)  # T, or just below it where alpha(T) = 0 (see SDE.sampling_T)
    if steps == 1:
        return torch.tensor([T], dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)  # (steps,) from T's end to eps's
    if grid == "trailing":
        return T - torch.arange(steps, dtype=torch.float64) * ((T - eps) / steps)
    if grid == "uniform":
        t = T + u * (eps - T)
    elif grid == "quadratic":
        t = (math.sqrt(T) + u * (math.sqrt(eps) - math.sqrt(T))) ** 2
    elif grid == "logsnr":
        lam_T, lam_eps = (sde.log_snr(torch.tensor([s], dtype=torch.float64)) for s in (T, eps))
        t = sde.t_from_log_snr(lam_T + u * (lam_eps - lam_T))
    else:  # "edm"
        s_max, s_min = (sigma_of(sde, torch.tensor([s], dtype=torch.float64)) ** (1.0 / rho)
                        for s in (T, eps))  # float64: a float32 eps moves every sigma
        t = t_of_sigma(sde, (s_max + u * (s_min - s_max)) ** rho)
    t = t.clone()
    t[0], t[-1] = T, eps  # exact end points (the inverse maps round)
    return t
