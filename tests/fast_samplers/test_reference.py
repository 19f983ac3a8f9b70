"""The fast samplers against their papers' algorithms, re-implemented here in a few lines each in
the papers' own variables (x-space with closed-form alpha(t), std(t); no helper of the code under
test except the time grid, which `test_grids.py` checks against its formulas). The grids are
chosen with UNEQUAL steps, so a step ratio, a cap or an evaluation time that is wrong shows up.
"""

from __future__ import annotations

import math

import pytest
import torch

from sde import VESDE, VPSDE
from sde.oracle import GaussianMixture
from sde.sampling.fast import _ggf_step, dpm_solver_pp_sample, heun_sample
from sde.sampling.grids import get_time_grid

MIX = GaussianMixture.ring(3, radius=1.5, std=0.3, weights=[1.0, 2.0, 3.0])
SHAPE = (8, 2)


def vp_coeffs(sde: VPSDE, t: float) -> tuple[float, float]:
    """alpha(t) = exp(-t^2 (b1 - b0) / 4 - t b0 / 2), std = sqrt(1 - alpha^2) (Song et al., Eq. 33)."""
    alpha = math.exp(-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
    return alpha, math.sqrt(1.0 - alpha**2)


def tweedie(score_fn, x, t, alpha, std):
    """E[x_0 | x_t] = (x + std^2 score) / alpha."""
    return (x + std**2 * score_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype))) / alpha


def reference_dpm_solver_pp_2m(sde, score_fn, x, ts):
    """Lu et al. (2022b), Algorithm 2 (DPM-Solver++(2M)) on the times ts, then x_0 = D(x, ts[-1]):
    x_i = (std_i / std_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i, with h_i = lambda_i -
    lambda_{i-1}, lambda = log(alpha / std), D_1 = x0_0 and, for i >= 2, r_i = h_{i-1} / h_i,
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}."""
    coeffs = [vp_coeffs(sde, t) for t in ts]
    lam = [math.log(a / s) for a, s in coeffs]
    x0_prev, h_prev = None, None
    for i in range(1, len(ts)):
        x0 = tweedie(score_fn, x, ts[i - 1], *coeffs[i - 1])
        h = lam[i] - lam[i - 1]
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        alpha, std = coeffs[i]
        x = (std / coeffs[i - 1][1]) * x - alpha * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return tweedie(score_fn, x, ts[-1], *coeffs[-1])


@pytest.mark.parametrize("grid", ["uniform", "edm", "quadratic"])
def test_dpm_solver_pp_2m_is_algorithm_2_with_unequal_steps(grid):
    """Uniform-in-t, EDM and quadratic grids have steps in lambda whose ratio r_i is far from 1
    (VP: r from 0.3 to 3), so an inverted ratio (r = h_i / h_{i-1}) or a wrong weight moves the
    output by far more than roundoff."""
    sde, steps = VPSDE(), 12
    ts = get_time_grid(sde, steps, grid, eps=1e-3).tolist()
    lam = [math.log(a / s) for a, s in (vp_coeffs(sde, t) for t in ts)]
    ratios = [(lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i]) for i in range(1, steps - 1)]
    assert max(abs(math.log(r)) for r in ratios) > 0.1  # the steps really are unequal
    score_fn = MIX.score_fn(sde)
    x, nfe = dpm_solver_pp_sample(sde, score_fn, SHAPE, steps=steps, grid=grid, order=2,
                                  dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_T = sde.prior_sampling(SHAPE, torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = reference_dpm_solver_pp_2m(sde, score_fn, x_T, ts)
    assert nfe == steps
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


def ve_sigma(sde: VESDE, t: float) -> float:
    return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t


def ve_time(sde: VESDE, sigma: float) -> float:
    """The inverse of sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
    return math.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)


def reference_heun(sde, score_fn, x, ts, generator, *, S_churn, S_tmin, S_tmax, S_noise):
    """Karras et al. (2022), Algorithm 2 on VE (alpha = 1, so x = y and sigma = std), with
    sigma_N = 0 and sigma_hat capped at sigma_0 (this project's choice: the SDE ends at T); the
    denoiser at sigma_hat is evaluated at t_hat = t(sigma_hat)."""
    n = len(ts)
    sigmas = [ve_sigma(sde, t) for t in ts] + [0.0]
    denoise = lambda x, s: tweedie(score_fn, x, ve_time(sde, s), 1.0, s)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0.0
        s_hat = min(s * (1 + gamma), sigmas[0])
        if s_hat > s:
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * torch.randn(
                x.shape, generator=generator, dtype=x.dtype)
        d = (x - denoise(x, s_hat)) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


@pytest.mark.parametrize("S_churn", [2.0, 80.0])
def test_heun_with_churn_is_karras_algorithm_2(S_churn):
    """S_churn = 80 on 10 steps asks for gamma = 8: the cap sqrt(2) - 1 must hold it; S_churn = 2
    is below the cap. The churned steps' denoiser must be evaluated at t_hat, not at t."""
    sde, steps = VESDE(), 10
    options = dict(S_churn=S_churn, S_tmin=0.05, S_tmax=10.0, S_noise=1.003)
    score_fn = MIX.score_fn(sde)
    ts = get_time_grid(sde, steps, "edm", eps=1e-3).tolist()
    x, nfe = heun_sample(sde, score_fn, SHAPE, steps=steps, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0), **options)
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling(SHAPE, g, dtype=torch.float64)
    expected = reference_heun(sde, score_fn, x_T, ts, g, **options)
    assert nfe == 2 * steps - 1
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


def test_gotta_go_fast_step_is_algorithm_1():
    """One step of Jolicoeur-Martineau et al. (2021), Algorithm 1, per example on VP:
    x' = x - h f_rev(x, t) + g(t) sqrt(h) z, x~ = x - h f_rev(x', t - h) + g(t - h) sqrt(h) z,
    x'' = (x' + x~) / 2, delta = max(atol, rtol max(|x'|, |x'_prev|)) with x' of THIS step,
    E = |(x' - x'') / delta|_2 / sqrt(n); accept if E <= 1 (then t -= h, x = x'', x'_prev = x'),
    and h <- min(t - eps, safety h E^-r) with the updated t. The examples straddle E = 1."""
    sde, eps = VPSDE(), 1e-3
    score_fn = MIX.score_fn(sde)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, generator=g, dtype=torch.float64)
    x_prev = x + 0.3 * torch.randn(7, 2, generator=g, dtype=torch.float64)
    z = torch.randn(7, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.3, 0.2, 0.05, 0.02, 0.012], dtype=torch.float64)
    h = torch.tensor([0.02, 0.1, 0.05, 0.15, 0.03, 0.015, 0.01], dtype=torch.float64)
    rtol, atol, safety, r = 0.05, 0.01, 0.9, 0.9

    def f_rev(x, t):  # reverse-SDE drift f - g^2 score, VP: f = -beta x / 2, g^2 = beta
        beta = (sde.beta_min + t * (sde.beta_max - sde.beta_min))[:, None]
        return -0.5 * beta * x - beta * score_fn(x, t)

    g_of = lambda t: (sde.beta_min + t * (sde.beta_max - sde.beta_min)).sqrt()[:, None]
    x1 = x - h[:, None] * f_rev(x, t) + g_of(t) * h.sqrt()[:, None] * z
    x_tilde = x - h[:, None] * f_rev(x1, t - h) + g_of(t - h) * h.sqrt()[:, None] * z
    x2 = 0.5 * (x1 + x_tilde)
    delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x1.abs(), x_prev.abs()))
    E = ((x1 - x2) / delta).pow(2).mean(1).sqrt()
    accept = E <= 1
    assert accept.any() and not accept.all()
    t_new = torch.where(accept, t - h, t)
    h_new = torch.minimum(t_new - eps, safety * h * E ** -r)
    assert accept[-1] and h_new[-1] == t_new[-1] - eps  # the last one lands on eps

    got = _ggf_step(sde.reverse(score_fn), x, x_prev, z, t, h, eps=eps, rtol=rtol, atol=atol,
                    safety=safety, exponent=r)
    torch.testing.assert_close(got[4], accept)
    torch.testing.assert_close(got[0], torch.where(accept[:, None], x2, x))
    torch.testing.assert_close(got[1], torch.where(accept[:, None], x1, x_prev))
    torch.testing.assert_close(got[2], t_new)
    torch.testing.assert_close(got[3], h_new)
