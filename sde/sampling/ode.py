"""Sampling and encoding through the probability-flow ODE (Eq. 13 of Song et al. 2021)."""

from __future__ import annotations

import contextlib

import torch
from torchdiffeq import odeint

from sde.sampling.predictors import ReverseDiffusionPredictor
from sde.utils import CountedScore, batch_time, check_eps, check_tolerances

#: torchdiffeq solvers that step on a fixed grid (they need `step_size` or a grid of times).
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                      "implicit_adams", "fixed_adams")
ADAPTIVE_RK_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
try:  # torchdiffeq keeps its solver table private
    from torchdiffeq._impl.odeint import SOLVERS
except ImportError:  # pragma: no cover
    SOLVERS = (*ADAPTIVE_RK_METHODS, *FIXED_GRID_METHODS, "scipy_solver")


def solver_options(method: str, t_start: float, t_end: float, n_steps: int, options=None,
                   device=None) -> dict:
    """Check `method` and fill in torchdiffeq options so that no step leaves [t_start, t_end]
    (VP's std is undefined for t < 0): fixed-grid methods get `n_steps` uniform steps unless
    `options` give a step size or a grid, and adaptive Runge-Kutta methods land on t_end
    (`step_t`) instead of stepping past it and interpolating back."""
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE method {method!r}; torchdiffeq solvers: {sorted(SOLVERS)}")
    options = dict(options or {})
    if method in FIXED_GRID_METHODS:
        if not {"step_size", "grid_constructor"} & set(options):
            options["grid_constructor"] = lambda func, y0, t: torch.linspace(
                float(t[0]), float(t[-1]), n_steps + 1, dtype=t.dtype, device=t.device)
    elif method in ADAPTIVE_RK_METHODS:
        options.setdefault("step_t", torch.tensor([float(t_end)], dtype=torch.float64,
                                                  device=device))
    return options


def solve_pf_ode(sde, score_fn, x, t_start: float, t_end: float, *, rtol=1e-5, atol=1e-5,
                 method="dopri5", options=None):
    """Integrate the probability-flow ODE dx/dt = f - g^2 score / 2 (Eq. 13) from `t_start` to
    `t_end` (either direction) -> (x at t_end, nfe).

    From eps to T this encodes data into latents, from T to eps it decodes (samples). The state
    keeps `x`'s dtype and device; the whole batch shares one adaptive step (as in score_sde).
    Fixed-grid methods take `sde.N` steps unless `options` say otherwise.
    """
    check_tolerances(rtol=rtol, atol=atol)
    counted = CountedScore(score_fn)
    rsde = sde.reverse(counted, probability_flow=True)
    options = solver_options(method, t_start, t_end, sde.N, options, device=x.device)

    def drift(t, x):
        return rsde.sde(x, batch_time(t, x))[0]

    times = torch.tensor([t_start, t_end], dtype=x.dtype, device=x.device)
    with torch.no_grad(), reraise_nonfinite(counted, "the probability-flow ODE"):
        x_end = odeint(drift, x, times, rtol=rtol, atol=atol, method=method, options=options)[-1]
    return x_end, counted.nfe


@contextlib.contextmanager
def reraise_nonfinite(counted: CountedScore, what: str):
    """Turn torchdiffeq's "underflow in dt" after a NaN score into the NonFiniteError naming it."""
    try:
        yield
    except AssertionError:
        counted.check(what=what)
        raise


def denoise_step(sde, score_fn, x, eps: float):
    """score_sde's final denoising: the mean of one reverse-diffusion step at t = eps."""
    predictor = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False)
    return predictor.update_fn(x, batch_time(eps, x))[1]


@torch.no_grad()
def ode_sample(sde, score_fn, shape, *, rtol=1e-5, atol=1e-5, method="dopri5", eps=1e-3,
               denoise=False, generator=None, device=None, dtype=torch.float32, options=None):
    """Sample by integrating the probability-flow ODE from x ~ prior at `sde.sampling_T` (T
    unless alpha(T) = 0) to t = eps with a torchdiffeq solver (Section 4.3 of Song et al. 2021)
    -> (x, nfe).

    `method` is any torchdiffeq solver; fixed-grid ones ("euler", "rk4", ...) take `sde.N` uniform
    steps unless `options={"step_size": h}`. `denoise` adds score_sde's final reverse-diffusion
    step at eps, taking its mean (one more score evaluation, counted in `nfe`).
    """
    check_eps(sde, eps)
    check_tolerances(rtol=rtol, atol=atol)
    counted = CountedScore(score_fn)
    x = sde.prior_sampling(shape, generator, device=device, dtype=dtype)  # (B, ...)
    x, _ = solve_pf_ode(sde, counted, x, sde.sampling_T, eps, rtol=rtol, atol=atol, method=method,
                        options=options)
    if denoise:
        x = denoise_step(sde, counted, x, eps)
    counted.check(x, what="ode_sample")
    return x, counted.nfe
