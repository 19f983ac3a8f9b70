"""The SDE library against closed forms: kernels, priors, reverse drifts, DDPM and SMLD chains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from sde import VESDE, VPSDE, SubVPSDE, sampling
from sde.oracle import GaussianMixture
from sde.utils import append_dims

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def _simulate_forward(sde, x0: float, times, n_paths: int, dt: float, generator):
    """Forward SDE from x(0) = x0 by Euler-Maruyama with the coefficients taken at each step's
    midpoint (second order in dt for these linear, additive-noise SDEs); the paths (n_paths, 1)
    at each of `times` (multiples of dt)."""
    x = torch.full((n_paths, 1), x0, dtype=torch.float64)
    out, k = [], 0
    for t_end in times:
        while (k + 0.5) * dt < t_end:
            t = torch.full((n_paths,), (k + 0.5) * dt, dtype=torch.float64)
            drift, diffusion = sde.sde(x, t)
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            x = x + drift * dt + append_dims(diffusion, 2) * math.sqrt(dt) * noise
            k += 1
        out.append(x)
    return out


@pytest.mark.parametrize("sde_name", list(SDES))
def test_marginal_prob_matches_monte_carlo(sde_name):
    """Mean alpha(t) x0 and variance std(t)^2 - (alpha(t) std(0))^2 of x_t given x_0 = x0 (VE's
    std(0) = sigma_min: its kernel is that of the data blurred by N(0, sigma_min^2)), against
    100 000 simulated paths with dt = 1/400, at t = 0.1, 0.5, 1. Tolerances: 5 Monte-Carlo
    standard errors (std / sqrt(n) for the mean, var sqrt(2 / n) = 0.45 % for the variance) + 0.3 %
    for the time stepping."""
    sde = SDES[sde_name]()
    x0, n, times = 1.5, 100_000, (0.1, 0.5, 1.0)
    paths = _simulate_forward(sde, x0, times, n, 1 / 400, torch.Generator().manual_seed(0))
    for t_end, x in zip(times, paths):
        alpha, std = sde.marginal_coeffs(torch.tensor([t_end, 0.0], dtype=torch.float64))
        mean, var = alpha[0].item() * x0, std[0].item() ** 2 - (alpha[0] * std[1]).item() ** 2
        assert abs(x.mean().item() - mean) <= 5 * math.sqrt(var / n) + 3e-3 * abs(mean)
        assert abs(x.var().item() / var - 1) <= 5 * math.sqrt(2 / n) + 3e-3
        # the same through marginal_prob on a (B, C, H, W) batch
        xb = torch.full((2, 1, 2, 2), x0, dtype=torch.float64)
        m, s = sde.marginal_prob(xb, torch.full((2,), t_end, dtype=torch.float64))
        torch.testing.assert_close(m, torch.full_like(xb, mean))
        torch.testing.assert_close(s, torch.full((2,), math.sqrt(var + (alpha[0] * std[1]).item()
                                                                 ** 2), dtype=torch.float64))


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("shape", [(4, 3), (4, 1, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prior_logp_is_normal_density(sde_name, shape, dtype):
    sde = SDES[sde_name]()
    z = sde.prior_sampling(shape, torch.Generator().manual_seed(0), dtype=dtype)
    assert z.shape == shape and z.dtype == dtype
    expected = stats.norm.logpdf(z.double().numpy(), scale=sde.prior_std).reshape(4, -1).sum(1)
    logp = sde.prior_logp(z)
    assert logp.shape == (4,) and logp.dtype == dtype
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(logp.double().numpy(), expected, rtol=rtol)


def test_prior_std_matches_kernel_at_T():
    """The prior is (approximately) the kernel at T: N(0, 1) for VP and sub-VP, N(0, sigma_max^2)
    for VE, up to alpha(T) = e^-5 (VP) and the std's 1 - std(T) < 1e-4."""
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        alpha, std = sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))
        assert abs(std.item() / sde.prior_std - 1) < 1e-4
        assert alpha.item() < 7e-3 or isinstance(sde, VESDE)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift_and_discretize(sde_name, probability_flow):
    """Reverse SDE drift f - g^2 score, diffusion g (Eq. 6); PF ODE drift f - g^2 score / 2,
    diffusion 0 (Eq. 13); the same on the discretisation (f, G)."""
    sde = SDES[sde_name](N=50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    score_fn = lambda x, t: -x * append_dims(1 + t, x.ndim) + 0.3
    rsde = sde.reverse(score_fn, probability_flow)
    weight = 0.5 if probability_flow else 1.0
    f, diff = sde.sde(x, t)
    rf, rdiff = rsde.sde(x, t)
    torch.testing.assert_close(rf, f - append_dims(diff**2, 4) * score_fn(x, t) * weight)
    torch.testing.assert_close(rdiff, torch.zeros_like(diff) if probability_flow else diff)
    fd, G = sde.discretize(x, t)
    rfd, rG = rsde.discretize(x, t)
    torch.testing.assert_close(rfd, fd - append_dims(G**2, 4) * score_fn(x, t) * weight)
    torch.testing.assert_close(rG, torch.zeros_like(G) if probability_flow else G)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_no_dtype_promotion(sde_name):
    """float32 inputs give float32 outputs everywhere despite the float64 buffers."""
    sde = SDES[sde_name](N=100)
    x = torch.randn(3, 2, 2)
    t = torch.full((3,), 0.4)
    score = lambda x, t: -x
    outputs = [*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t),
               sde.prior_logp(x), sde.langevin_scale(t), *sde.reverse(score).sde(x, t),
               *sde.reverse(score, True).discretize(x, t), sde.prior_sampling((2, 3))]
    if sde_name != "subvp":
        outputs += list(sde.ancestral_step(x, t, score(x, t)))
    assert all(o.dtype == torch.float32 for o in outputs)


@pytest.mark.parametrize("make", [
    lambda: VPSDE(beta_min=-0.1), lambda: VPSDE(beta_min=1.0, beta_max=1.0),
    lambda: SubVPSDE(beta_min=2.0, beta_max=1.0), lambda: VESDE(sigma_min=0.0),
    lambda: VESDE(sigma_min=5.0, sigma_max=5.0), lambda: VPSDE(N=0), lambda: VESDE(N=2.5),
])
def test_bad_parameters_raise(make):
    with pytest.raises(ValueError, match="beta_min|beta_max|sigma_min|sigma_max|N must"):
        make()


# --- the discrete chains -------------------------------------------------------------------------

def test_ddpm_betas():
    sde = VPSDE(0.1, 20, 1000)
    expected = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(sde.discrete_betas, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.alphas_cumprod, torch.cumprod(1 - expected, 0), rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [10, 200, 1000])
def test_pc_grid_visits_every_chain_index_once(dtype, N):
    """score_sde's grid linspace(T, eps, N) maps to the chain indices N-1, ..., 0 in order,
    in float32 too (the floor has a 1e-4 guard against rounding 999 down to 998)."""
    sde = VPSDE(N=N)
    t = torch.linspace(1.0, 1e-3, N, dtype=torch.float64).to(dtype)
    torch.testing.assert_close(sde.timestep(t), torch.arange(N - 1, -1, -1))


def test_ancestral_step_is_ddpm_algorithm_2():
    """One ancestral step = Algorithm 2 of Ho et al. (2020): x_{t-1} = (x_t - beta_t /
    sqrt(1 - alphabar_t) eps) / sqrt(alpha_t) + sigma_t z with sigma_t^2 = beta_t, where the score
    is -eps / sqrt(1 - alphabar_t)."""
    sde = VPSDE(0.1, 20, 1000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps_model = lambda x, i: torch.tanh(x) * (1 + i.double()[:, None, None, None] / 1000)
    abar, alpha, beta = sde.alphas_cumprod, sde.alphas, sde.discrete_betas

    def score_fn(x, t):
        i = sde.timestep(t)
        return -eps_model(x, i) / append_dims(torch.sqrt(1 - abar[i]), x.ndim)

    predictor = sampling.AncestralSamplingPredictor(sde, score_fn)
    for i in [999, 500, 1, 0]:
        t = torch.full((6,), i / 999, dtype=torch.float64)
        x_new, x_mean = predictor.update_fn(x, t, torch.Generator().manual_seed(i))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        ii = torch.full((6,), i)
        mean = (x - beta[i] / torch.sqrt(1 - abar[i]) * eps_model(x, ii)) / torch.sqrt(alpha[i])
        torch.testing.assert_close(x_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x_new, mean + torch.sqrt(beta[i]) * z, rtol=1e-12, atol=1e-12)


def test_pc_ancestral_chain_is_ddpm_sampler():
    """pc_sample(ancestral, no corrector, denoise) is DDPM's whole sampling loop, step for step
    (its last step adds no noise), with the same noise draws."""
    sde = VPSDE(0.1, 20, 1000)
    eps_model = lambda x, i: 0.5 * torch.sin(x) + 0.01 * i
    abar, alpha, beta = sde.alphas_cumprod, sde.alphas, sde.discrete_betas
    score_fn = lambda x, t: -eps_model(x, sde.timestep(t)[0].item()) / torch.sqrt(
        1 - abar[sde.timestep(t)[0]])
    x, nfe = sampling.pc_sample(sde, score_fn, (4, 2), predictor="ancestral_sampling",
                                corrector="none", dtype=torch.float64,
                                generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    for i in range(999, -1, -1):
        z = torch.randn(4, 2, generator=g, dtype=torch.float64)
        y = (y - beta[i] / torch.sqrt(1 - abar[i]) * eps_model(y, i)) / torch.sqrt(alpha[i])
        y = y + (torch.sqrt(beta[i]) * z if i > 0 else 0)
    assert nfe == 1000
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_ddpm_kernel_matches_sde_kernel():
    """DDPM's q(x_t | x_0) = N(sqrt(alphabar_i) x_0, (1 - alphabar_i) I) equals the VP kernel at
    t = (i + 1) / N to first order: max error 0.99e-3 (mean coefficient) and 1.32e-3 (std) at
    N = 1000, halving when N doubles (the Riemann sum of beta and the beta^2 terms of
    log(1 - beta) are both O(1/N))."""
    errors = []
    for N in (1000, 2000):
        sde = VPSDE(0.1, 20, N)
        t = (torch.arange(N, dtype=torch.float64) + 1) / N
        alpha, std = sde.marginal_coeffs(t)
        errors.append(((sde.alphas_cumprod.sqrt() - alpha).abs().max().item(),
                       (torch.sqrt(1 - sde.alphas_cumprod) - std).abs().max().item()))
    assert errors[0][0] < 1.2 / 1000 and errors[0][1] < 1.6 / 1000
    for e1000, e2000 in zip(*errors):
        assert 1.8 < e1000 / e2000 < 2.2


def test_smld_chain():
    """VE: geometric sigmas from sigma_min to sigma_max, sigma_i = sigma(i / (N - 1)), and the
    SMLD step variance sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0)."""
    sde = VESDE(0.01, 50.0, 100)
    i = torch.arange(100, dtype=torch.float64)
    torch.testing.assert_close(sde.discrete_sigmas, sde.sigma(i / 99))
    ratios = sde.discrete_sigmas[1:] / sde.discrete_sigmas[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000 ** (1 / 99)))
    x = torch.zeros(100, 2, dtype=torch.float64)
    _, G = sde.discretize(x, i / 99)
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), sde.discrete_sigmas[:-1]])
    torch.testing.assert_close(G**2, sde.discrete_sigmas**2 - previous**2)


def test_ve_kernel_std_is_sigma():
    """score_sde's convention: VE's kernel std is sigma(t), not sqrt(sigma^2 - sigma_min^2)."""
    sde = VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(sde.marginal_coeffs(t)[1], 0.01 * 5000.0**t)


def test_smld_ancestral_step_is_exact_posterior_for_a_point_mass():
    """For data at a single point x0, Eq. 47's ancestral step with the exact score is the
    posterior q(x_{i-1} | x_i, x0) = N(x0 + r (x_i - x0), sigma_{i-1}^2 (1 - r)) with
    r = sigma_{i-1}^2 / sigma_i^2, so it maps exact samples of p_{sigma_i} to exact samples of
    p_{sigma_{i-1}} however large the step (here sigma ratio 8.4). Checked on mean and variance
    with 20 000 samples (4 SE: 0.028 sigma_{i-1} on the mean, 4 % on the variance)."""
    sde = VESDE(0.01, 50.0, N=5)
    x0 = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    point = GaussianMixture(x0, 1e-6)
    predictor = sampling.AncestralSamplingPredictor(sde, point.score_fn(sde))
    for i in (4, 2, 1):
        sigma, previous = sde.discrete_sigmas[i].item(), sde.discrete_sigmas[i - 1].item()
        x = x0 + sigma * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(i),
                                     dtype=torch.float64)
        x_new, _ = predictor.update_fn(x, torch.full((20_000,), i / 4, dtype=torch.float64),
                                       torch.Generator().manual_seed(10 + i))
        assert ((x_new.mean(0) - x0).abs() < 4 * previous / math.sqrt(20_000)).all()
        assert ((x_new.var(0) / previous**2 - 1).abs() < 4 * math.sqrt(2 / 20_000)).all()


def test_vp_chain_with_too_few_steps_warns():
    """N <= beta_max makes DDPM's betas beta_max / N >= 1 (NaN downstream): the chain-based
    methods warn (once per SDE); the continuous SDE still works."""
    x, t = torch.zeros(2, 2), torch.full((2,), 0.5)
    for call in (lambda s: s.discretize(x, t), lambda s: s.langevin_scale(t),
                 lambda s: s.ancestral_step(x, t, x)):
        with pytest.warns(UserWarning, match="N > beta_max"):
            call(VPSDE(N=10))
    with pytest.warns(UserWarning, match="N > beta_max"):
        SubVPSDE(N=4).langevin_scale(t)
    sde = VPSDE(N=10)
    assert torch.isfinite(sde.sde(x, t)[0]).all()
    x, _ = sampling.pc_sample(sde, lambda x, t: -x, (2, 2), predictor="euler_maruyama",
                              corrector="none")
    assert torch.isfinite(x).all()
