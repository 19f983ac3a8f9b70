"""Multistep samplers for few steps: UniPC (Zhao et al. 2023) and DEIS / iPNDM (Zhang & Chen 2023).

Both work in y = x / alpha(t) and sigma(t) = std(t) / alpha(t) like `sde.sampling.fast` (the
probability-flow ODE is dy/dsigma = (y - D(y)) / sigma with Tweedie's denoiser D), so they run
on every SDE here without branching on its class. As there, the score is evaluated at the
`steps` times of `get_time_grid` (from `sde.sampling_T`, just below T where alpha(T) = 0) and
the output is D(y, eps), the limit of every update as sigma_next -> 0: `nfe = steps`, no
leftover noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sde.sampling.fast import _finish_at_eps, _start

UNIPC_VARIANTS = ("bh1", "bh2")
DEIS_VARIANTS = ("rhoab", "ipndm")
# Adams-Bashforth weights on (eps_i, eps_{i-1}, ...) for equal steps (iPNDM, Zhang & Chen 2023)
IPNDM_WEIGHTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12),
                 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _check_order(name: str, order, top: int) -> None:
    if isinstance(order, bool) or order not in range(1, top + 1):
        raise ValueError(f"{name} order must be an integer in 1..{top}, got {order!r}")


def _step_order(order: int, i: int, n_steps: int, lower_order_final: bool) -> int:
    """Warm-up with lower orders (too few previous values) and, with fewer than 10 steps, lower
    orders at the end (`lower_order_final`, as in the DPM-Solver / UniPC reference code)."""
    step_order = min(order, i + 1)
    if lower_order_final and n_steps < 10:
        step_order = min(step_order, n_steps - i)
    return step_order


def _unipc_coefficients(h: float, rks: list[float], variant: str):
    """UniPC's linear systems (Zhao et al. 2023, Algorithms 1-2 with data prediction): R (p, p)
    with rows r_k^(i-1) and b_i = phi_i(h) i! / B(h), phi_1 = e^{-h} - 1 = h_phi_1,
    phi_{i+1} = phi_i / (-h) - 1 / (i + 1)!; B(h) = -h (bh1) or e^{-h} - 1 (bh2)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    rows, b = [], []
    for i in range(1, len(rks) + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * math.factorial(i) / b_h)
        h_phi_k = h_phi_k / hh - 1.0 / math.factorial(i + 1)
    return np.array(rows), np.array(b), h_phi_1, b_h


def _unipc_step(y, x0s, lams, s, s_next, order: int, variant: str):
    """UniP-p from sigma s to s_next -> (y_pred, correct), where `correct(x0_next)` is UniC-p:
    the corrected y at s_next from the data prediction x0_next at the predicted y."""
    h = math.log(s / s_next)
    rks = [(lam - lams[-1]) / h for lam in reversed(lams[:-1])][: order - 1] + [1.0]
    d1s = [(x0 - x0s[-1]) / r for x0, r in zip(reversed(x0s[:-1]), rks[:-1])]
    R, b, h_phi_1, b_h = _unipc_coefficients(h, rks, variant)
    y_base = (s_next / s) * y - h_phi_1 * x0s[-1]  # the DDIM / DPM-Solver++(1) step
    y_pred = y_base
    if d1s:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        y_pred = y_base - b_h * sum(rho * d for rho, d in zip(rhos_p, d1s))

    def correct(x0_next):
        rhos_c = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
        res = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s)) + rhos_c[-1] * (x0_next - x0s[-1])
        return y_base - b_h * res

    return y_pred, correct


@torch.no_grad()
def unipc_sample(sde, score_fn, shape, *, steps, grid="logsnr", eps=1e-3, order=2,
                 variant="bh2", lower_order_final=True, denoise_to_zero=True, rho=7.0,
                 times=None, generator=None, device=None, dtype=torch.float32):
    """UniPC with data prediction (Zhao et al. 2023): the UniP-p multistep predictor, then the
    UniC corrector that reuses the next step's score evaluation, so it raises the order by one
    at no extra cost -> (x, nfe = steps). `variant` "bh1" (B(h) = h, best for very few steps
    per the paper) or "bh2" (B(h) = e^h - 1); `order` 1-3. The last interval is predictor-only
    (its evaluation gives the output D(y, eps)). `denoise_to_zero=False`: steps + 1 grid times,
    the last step lands on eps unevaluated, output x_eps. Deterministic; `generator` only draws
    x_T."""
    _check_order("unipc", order, 3)
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown unipc variant {variant!r}; known: {', '.join(UNIPC_VARIANTS)}")
    denoiser, ts, sigmas, y = _start(sde, score_fn, shape, steps, grid, eps, rho, generator,
                                     device, dtype, times=times, denoise_to_zero=denoise_to_zero)
    n_steps = len(ts) - 1
    x0s, lams = [denoiser(y, ts[0])], [-math.log(sigmas[0])]
    for i in range(n_steps):
        step_order = _step_order(order, i, n_steps, lower_order_final)
        y, correct = _unipc_step(y, x0s[-step_order:], lams[-step_order:], sigmas[i],
                                 sigmas[i + 1], step_order, variant)
        if i == n_steps - 1:  # the last interval: predictor only
            return _finish_at_eps(denoiser, y, ts[-1], denoise_to_zero, "unipc_sample")
        x0_next = denoiser(y, ts[i + 1])
        y = correct(x0_next)
        x0s, lams = (x0s + [x0_next])[-order:], (lams + [-math.log(sigmas[i + 1])])[-order:]
    return denoiser.finish(x0s[-1], "unipc_sample")  # steps = 1: D(y_T, T), one NFE


def _lagrange_integrals(nodes: list[float], a: float, b: float) -> list[float]:
    """int_a^b L_j(s) ds for the Lagrange basis L_j through `nodes` (Gauss-Legendre, exact up to
    degree 7)."""
    q, w = np.polynomial.legendre.leggauss(4)
    s = 0.5 * (b - a) * q + 0.5 * (a + b)
    out = []
    for j, s_j in enumerate(nodes):
        basis = np.ones_like(s)
        for m, s_m in enumerate(nodes):
            if m != j:
                basis *= (s - s_m) / (s_j - s_m)
        out.append(float(0.5 * (b - a) * (w * basis).sum()))
    return out


@torch.no_grad()
def deis_sample(sde, score_fn, shape, *, steps, grid="logsnr", eps=1e-3, order=3,
                variant="rhoab", lower_order_final=True, denoise_to_zero=True, rho=7.0,
                times=None, generator=None, device=None, dtype=torch.float32):
    """DEIS (Zhang & Chen 2023) on dy/dsigma = eps(y, sigma), eps = (y - D) / sigma: multistep
    with eps extrapolated by a polynomial through the last `order` noise levels.
    `variant="rhoab"`: the polynomial in sigma integrated exactly over the step ("rho-AB-DEIS",
    right for unequal steps); `"ipndm"`: iPNDM's Adams-Bashforth weights for equal steps.
    `order` 1-4 -> (x, nfe = steps); deterministic, `generator` only draws x_T.
    `denoise_to_zero=False`: steps + 1 grid times, the last step lands on eps, output x_eps."""
    _check_order("deis", order, 4)
    if variant not in DEIS_VARIANTS:
        raise ValueError(f"unknown deis variant {variant!r}; known: {', '.join(DEIS_VARIANTS)}")
    denoiser, ts, sigmas, y = _start(sde, score_fn, shape, steps, grid, eps, rho, generator,
                                     device, dtype, times=times, denoise_to_zero=denoise_to_zero)
    n_steps = len(ts) - 1
    eps_hist, nodes = [], []
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        eps_hist = ([(y - denoiser(y, ts[i])) / s] + eps_hist)[:order]  # newest first
        nodes = ([s] + nodes)[:order]
        k = _step_order(order, i, n_steps, lower_order_final)
        if variant == "ipndm":
            weights = [(s_next - s) * w for w in IPNDM_WEIGHTS[k]]
        else:
            weights = _lagrange_integrals(nodes[:k], s, s_next)
        y = y + sum(w * e for w, e in zip(weights, eps_hist[:k]))
    return _finish_at_eps(denoiser, y, ts[-1], denoise_to_zero, "deis_sample")
