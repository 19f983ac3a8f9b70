"""Convergence order on Gaussian data, where the probability-flow ODE is solved in closed form.

For p_0 = N(mu, s^2 I) the ODE maps x_T to x_t = alpha_t mu + r_t / r_T (x_T - alpha_T mu) with
r_t = sqrt(alpha_t^2 s^2 + std_t^2). Every grid sampler ends with the denoiser at eps, which is
linear here: x_0 = mu + alpha s^2 / r^2 (x_eps - alpha mu). So the exact output is known and a
solver of order p cuts its error by 2^p when the number of steps doubles.
"""

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE
from sde.oracle import GaussianMixture
from sde.sampling.fast import ddim_sample, dpm_solver_pp_sample, dpm_solver_sample, heun_sample
from sde.sampling.multistep import deis_sample, unipc_sample

MU, S, EPS, SHAPE = 0.5, 0.7, 1e-3, (16, 3)
SDES = [VPSDE(), SubVPSDE(), VESDE()]


def coeffs(sde, t):
    alpha, std = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return alpha.item(), std.item()


def exact_output(sde, x_T, denoise_to_zero=True):
    (a_T, s_T), (a, s) = coeffs(sde, sde.T), coeffs(sde, EPS)
    r_T, r = (a_T**2 * S**2 + s_T**2) ** 0.5, (a**2 * S**2 + s**2) ** 0.5
    x_eps = a * MU + r / r_T * (x_T - a_T * MU)
    return MU + a * S**2 / r**2 * (x_eps - a * MU) if denoise_to_zero else x_eps


def error(sampler, sde, intervals, **options):
    """Max error of the output after `intervals` steps (grid times: intervals + 1, or intervals
    with denoise_to_zero=False, whose last step lands on eps)."""
    score_fn = GaussianMixture(torch.full((1, SHAPE[1]), MU), S).score_fn(sde)
    denoise = options.get("denoise_to_zero", True)
    x, _ = sampler(sde, score_fn, SHAPE, steps=intervals + denoise, eps=EPS, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(0), **options)
    x_T = sde.prior_sampling(SHAPE, torch.Generator().manual_seed(0), dtype=torch.float64)
    return (x - exact_output(sde, x_T, denoise)).abs().max().item()


CASES = [  # sampler, options, intervals, expected error ratio when they double, tolerance
    (ddim_sample, {"grid": "logsnr"}, 16, 2.0, 0.25),
    (heun_sample, {}, 16, 4.0, 0.25),
    (dpm_solver_sample, {"order": 2}, 16, 4.0, 0.25),
    (dpm_solver_pp_sample, {"order": 2}, 32, 4.0, 0.25),
    # UniPC-p: the corrector raises the order to p + 1 (Zhao et al. 2023, Theorem 3.1); with
    # p = 3 the order-1 and -2 warm-up steps cap it at 3 on the logSNR grid, whose first steps
    # are long, but not on the EDM grid (measured ratios 15.6-16.1 there)
    (unipc_sample, {"order": 1, "variant": "bh1"}, 32, 4.0, 0.25),
    (unipc_sample, {"order": 1, "variant": "bh2"}, 32, 4.0, 0.25),
    (unipc_sample, {"order": 2, "variant": "bh1"}, 32, 8.0, 0.25),
    (unipc_sample, {"order": 2, "variant": "bh2"}, 32, 8.0, 0.25),
    (unipc_sample, {"order": 3, "variant": "bh1", "grid": "edm"}, 64, 16.0, 0.25),
    (unipc_sample, {"order": 3, "variant": "bh2", "grid": "edm"}, 64, 16.0, 0.25),
    # DEIS (rho-AB): order = the polynomial's number of nodes; the ratios approach 2^p from
    # below (measured at 64 -> 128 intervals: 3.7-3.8, 6.6-7.1, and on EDM's grid 12.7-13.6)
    (deis_sample, {"order": 1}, 32, 2.0, 0.25),
    (deis_sample, {"order": 2}, 64, 4.0, 0.25),
    (deis_sample, {"order": 3}, 64, 8.0, 0.25),
    (deis_sample, {"order": 4, "grid": "edm"}, 64, 16.0, 0.3),
    # iPNDM: Adams-Bashforth weights for equal steps, so 2nd order on the unequal logSNR grid
    # (measured 4.1-4.3 at 32 -> 64)
    (deis_sample, {"order": 4, "variant": "ipndm"}, 32, 4.0, 0.25),
    # denoise_to_zero=False: the output is x_eps itself, with the same orders
    (dpm_solver_pp_sample, {"order": 2, "denoise_to_zero": False}, 32, 4.0, 0.25),
    (unipc_sample, {"order": 2, "denoise_to_zero": False}, 32, 8.0, 0.25),
    (deis_sample, {"order": 3, "denoise_to_zero": False}, 64, 8.0, 0.25),
]
IDS = ["ddim", "heun", "dpm_solver-2", "dpm_solver_pp-2M", "unipc-bh1-1", "unipc-bh2-1",
       "unipc-bh1-2", "unipc-bh2-2", "unipc-bh1-3-edm", "unipc-bh2-3-edm", "deis-1", "deis-2",
       "deis-3", "deis-4-edm", "ipndm-4", "dpm_solver_pp-2M-x_eps", "unipc-bh2-2-x_eps",
       "deis-3-x_eps"]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("sampler, options, intervals, ratio, tol", CASES, ids=IDS)
def test_halving_the_step_cuts_the_error_by_2_to_the_order(sde, sampler, options, intervals,
                                                          ratio, tol):
    coarse, fine = error(sampler, sde, intervals, **options), error(sampler, sde, 2 * intervals,
                                                                    **options)
    assert coarse / fine == pytest.approx(ratio, abs=tol * ratio)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_dpm_solver_3_is_third_order(sde):
    coarse, fine = (error(dpm_solver_sample, sde, m, order=3) for m in (16, 32))
    assert 6.0 < coarse / fine < 12.0
    assert fine < 1e-3


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_dpm_solver_pp_3m_beats_2m(sde):
    assert error(dpm_solver_pp_sample, sde, 32, order=3) < error(dpm_solver_pp_sample, sde, 32)


def test_ode_samplers_agree_on_a_mixture():
    """Nonlinear scores: every deterministic solver converges to the same flow map of x_T."""
    sde, mixture = VPSDE(), GaussianMixture.ring(4, radius=1.5, std=0.3)
    kwargs = dict(shape=(32, 2), eps=EPS, dtype=torch.float64)
    run = lambda f, steps, **o: f(sde, mixture.score_fn(sde), generator=torch.Generator()
                                  .manual_seed(3), steps=steps, **kwargs, **o)[0]
    reference = run(dpm_solver_sample, 200, order=3)
    for f, steps, options, tol in [
        (heun_sample, 200, {}, 1e-3), (dpm_solver_sample, 200, {"order": 2}, 1e-3),
        (dpm_solver_pp_sample, 300, {"order": 3}, 3e-4),
        (ddim_sample, 2000, {"grid": "logsnr"}, 5e-3),
    ]:
        assert (run(f, steps, **options) - reference).abs().max() < tol, f.__name__
    assert (run(ddim_sample, 10) - reference).abs().max() > 1e-2  # the check can fail


@pytest.mark.parametrize("sampler", [dpm_solver_pp_sample, unipc_sample, deis_sample])
def test_without_denoise_to_zero_the_output_is_the_flow_at_eps(sampler):
    """At eps = 0.3 (alpha = 0.63 on VP) the output is x_eps, not y_eps = x_eps / alpha or the
    denoised x_0."""
    sde, eps = VPSDE(), 0.3
    score_fn = GaussianMixture(torch.full((1, SHAPE[1]), MU), S).score_fn(sde)
    x, nfe = sampler(sde, score_fn, SHAPE, steps=64, eps=eps, dtype=torch.float64,
                     denoise_to_zero=False, generator=torch.Generator().manual_seed(0))
    x_T = sde.prior_sampling(SHAPE, torch.Generator().manual_seed(0), dtype=torch.float64)
    (a_T, s_T), (a, s) = coeffs(sde, sde.T), coeffs(sde, eps)
    r_T, r = (a_T**2 * S**2 + s_T**2) ** 0.5, (a**2 * S**2 + s**2) ** 0.5
    assert nfe == 64
    assert (x - (a * MU + r / r_T * (x_T - a_T * MU))).abs().max() < 2e-3  # y_eps: off by 0.5
