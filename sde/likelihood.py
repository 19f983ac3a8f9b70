"""Exact log-likelihood through the probability-flow ODE (Section D.2 of Song et al. 2021) and
bits per dimension of 8-bit data.

Along the ODE dx/dt = f~(x, t) = f - g^2 score / 2, the log-density obeys
d log p_t(x_t) / dt = -div f~(x_t, t) (instantaneous change of variables, Chen et al. 2018), so

    log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt,   x_eps = x,

with p_T replaced by the prior. The divergence is exact (one backward pass per dimension) or
the Hutchinson-Skilling estimate v^T (d f~ / dx) v with one probe v per example, fixed over the
whole integration (as score_sde).
"""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from sde.sampling.ode import reraise_nonfinite, solver_options
from sde.utils import (
    CountedScore,
    batch_time,
    check_tolerances,
    flat_dim,
    rademacher_like,
    randn_like,
)

HUTCHINSON = ("rademacher", "gaussian", "exact")


def _probe(name: str, x: torch.Tensor, generator):
    """The Hutchinson probe v shaped like x (None for the exact divergence)."""
    if name == "rademacher":
        return rademacher_like(x, generator)
    if name == "gaussian":
        return randn_like(x, generator)
    return None


def divergence(f: torch.Tensor, x: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """div_x f (B,) for f = F(x) built with x.requires_grad: exact (probe None, one backward
    pass per dimension) or the Hutchinson-Skilling estimate v^T (df/dx) v (probe v)."""
    if probe is not None:
        (vjp,) = torch.autograd.grad((f * probe).sum(), x, allow_unused=True)
        vjp = torch.zeros_like(x) if vjp is None else vjp
        return (vjp * probe).flatten(1).sum(1)
    f_flat = f.flatten(1)  # (B, D)
    div = torch.zeros(x.shape[0], dtype=f.dtype, device=f.device)
    for j in range(f_flat.shape[1]):
        (row,) = torch.autograd.grad(f_flat[:, j].sum(), x, retain_graph=True, allow_unused=True)
        if row is not None:
            div = div + row.flatten(1)[:, j]
    return div


def _check_args(hutchinson: str, x: torch.Tensor, eps: float, sde, max_exact_dim: int, *,
                rtol, atol) -> str:
    name = hutchinson.lower()
    if name not in HUTCHINSON:
        raise ValueError(f"unknown hutchinson {hutchinson!r}; choose one of {list(HUTCHINSON)}")
    if name == "exact" and flat_dim(x) > max_exact_dim:
        raise ValueError(
            f"hutchinson='exact' costs one backward pass per dimension and x has {flat_dim(x)} > "
            f"max_exact_dim={max_exact_dim}; use 'rademacher' or 'gaussian', or raise max_exact_dim"
        )
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    check_tolerances(rtol=rtol, atol=atol)
    return name


@torch.no_grad()
def log_likelihood(sde, score_fn, x, *, hutchinson="rademacher", rtol=1e-5, atol=1e-5, eps=1e-5,
                   method="dopri5", generator=None, options=None, solver_dtype=torch.float64,
                   max_exact_dim=256):
    """log p_eps(x) in nats (B,) through the probability-flow ODE -> (logp, z, nfe).

    Integrates (x, delta_logp) from eps to T with a torchdiffeq solver; `z` (shaped like x) is
    the latent at T and logp = prior_logp(z) + delta_logp. The solver state is kept in
    `solver_dtype` (float64 by default, as score_sde's scipy solver) while `score_fn` sees x's
    dtype; logp and z come back in x's dtype. `hutchinson` is "rademacher", "gaussian" or
    "exact" (for dimension up to `max_exact_dim`). `nfe` counts `score_fn` calls.
    """
    name = _check_args(hutchinson, x, eps, sde, max_exact_dim, rtol=rtol, atol=atol)
    counted = CountedScore(score_fn)
    rsde = sde.reverse(counted, probability_flow=True)
    probe = _probe(name, x, generator)
    options = solver_options(method, eps, sde.sampling_T, sde.N, options, device=x.device)

    def ode_func(t, state):
        x_t = state[0].detach().to(x.dtype).requires_grad_(True)  # (B, ...) in the model's dtype
        with torch.enable_grad():
            drift = rsde.sde(x_t, batch_time(t, x_t))[0]
            div = divergence(drift, x_t, probe)  # (B,)
        return drift.detach().to(solver_dtype), div.detach().to(solver_dtype)

    state = (x.to(solver_dtype), torch.zeros(x.shape[0], dtype=solver_dtype, device=x.device))
    times = torch.tensor([eps, sde.sampling_T], dtype=solver_dtype, device=x.device)
    with reraise_nonfinite(counted, "log_likelihood"):
        x_T, delta_logp = (s[-1] for s in odeint(ode_func, state, times, rtol=rtol, atol=atol,
                                                  method=method, options=options))
    logp = sde.prior_logp(x_T) + delta_logp
    counted.check(logp, x_T, what="log_likelihood")
    return logp.to(x.dtype), x_T.to(x.dtype), counted.nfe


def bits_per_dim(logp: torch.Tensor, x_or_dim, *, centered: bool = True, n_bits: int = 8):
    """Bits per dimension of n-bit data from the log-density `logp` (B,) of the dequantized data
    in model space; `x_or_dim` is the data (B, ...) or the dimension D of one example.

    Data: integers k in {0, ..., 2^n - 1}^D, dequantized uniformly, y = (k + u) / 2^n in [0, 1)^D
    with u ~ U[0, 1)^D (see `dequantize`), then scaled to model space: x = 2 y - 1 in [-1, 1)
    (`centered`, score_sde's `data.centered=True`) or x = y. A density p_x defines the discrete
    model P(k) = int_{[0,1)^D} p_y((k + u) / 2^n) 2^{-nD} du with p_y(y) = p_x(x) |dx/dy|, and by
    Jensen's inequality

        -log2 P(k) / D <= E_u[-log p_x(x)] / (D ln 2) - log2 |dx/dy|^{1/D} + n.

    |dx/dy|^{1/D} is 2 for centered data and 1 otherwise, so the offset added to
    -logp / (D ln 2) is n - 1 = 7 bits (centered) or n = 8 bits ([0, 1) data). This is score_sde's
    `offset = 7 - inverse_scaler(-1)` (`likelihood.py`). As there, logp is log p_eps with small
    eps (the gap to log p_0 is ignored), so the result is an upper bound on the data's bits/dim.
    """
    dim = int(x_or_dim) if isinstance(x_or_dim, int) else flat_dim(x_or_dim)
    offset = n_bits - (1.0 if centered else 0.0)
    return -logp / (dim * math.log(2.0)) + offset


def dequantize(k: torch.Tensor, generator=None, *, centered: bool = True, n_bits: int = 8):
    """Uniform dequantization of integer data k in {0, ..., 2^n - 1} to model space:
    y = (k + u) / 2^n, u ~ U[0, 1), then 2 y - 1 if `centered` (the convention of `bits_per_dim`).
    Returns float32 (or k's dtype if floating), with y kept below 1 (float32 rounding)."""
    dtype = k.dtype if k.is_floating_point() else torch.float32
    noise = torch.rand(k.shape, generator=generator, dtype=dtype,
                       device=generator.device if generator is not None else k.device)
    y = (k.to(dtype) + noise.to(k.device)) / 2**n_bits
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    y = y.clamp(max=below_one.item())  # (255 + u) / 256 rounds up to 1 in float32 for u near 1
    return 2 * y - 1 if centered else y
