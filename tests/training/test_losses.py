"""Losses against closed forms: for Gaussian data N(0, s^2 I) the exact score of p_t is
-x / (alpha^2 s^2 + std^2), and its DSM loss is a known function of t."""

import math

import pytest
import torch

from sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from sde.losses import ddpm_loss, dsm_loss, gaussian_dsm_constant, importance_times, smld_loss
from sde.models import get_score_fn

S0 = 0.7  # data std


def exact_score(sde):
    def score_fn(x, t):
        alpha, std = sde.marginal_coeffs(t.to(x.dtype))
        var = alpha**2 * S0**2 + std**2
        return -x / var.reshape(-1, *[1] * (x.ndim - 1))

    return score_fn


def gaussian_data(n, shape=(2,), seed=0):
    return S0 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)


def quad(f, a, b, n=200_001):
    """Trapezoid rule of f on [a, b] in float64 (log-spaced nodes resolve the t -> 0 end)."""
    t = torch.logspace(math.log10(a), math.log10(b), n, dtype=torch.float64)
    return torch.trapezoid(f(t), t).item()


def assert_mc(samples, expected, z=5.0):
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    assert abs(mean - expected) < z * se + 1e-12, (mean, expected, se)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_dsm_loss_of_exact_score_at_fixed_t(sde):
    x = gaussian_data(100_000, shape=(1, 2, 2))
    for t0 in (1e-3, 0.3, 0.9):
        t = torch.full((x.shape[0],), t0, dtype=torch.float64)
        losses = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(1), t=t)
        assert_mc(losses, gaussian_dsm_constant(sde, S0, t[:1]).item())


ZERO_SNR = [CosineVPSDE(), VPSDE(zero_terminal_snr=True)]  # t ranges up to sde.sampling_T < T


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), *ZERO_SNR], ids=["vp", "ve", "cosine", "zsnr"])
def test_dsm_loss_of_exact_score_over_t_is_the_known_constant(sde):
    eps, end = 1e-5, sde.sampling_T
    x = gaussian_data(200_000)
    losses = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(2), eps=eps)
    expected = quad(lambda t: gaussian_dsm_constant(sde, S0, t), eps, end) / (end - eps)
    assert_mc(losses, expected)
    # and a wrong score is measurably worse
    wrong = dsm_loss(sde, lambda x, t: 1.5 * exact_score(sde)(x, t), x,
                     generator=torch.Generator().manual_seed(2), eps=eps)
    assert wrong.mean() > losses.mean() + 0.05


def _likelihood_integrand(sde):
    def f(t):
        g2 = sde.sde(torch.zeros(len(t), 1, dtype=t.dtype), t)[1] ** 2
        return g2 / sde.marginal_coeffs(t)[1] ** 2 * gaussian_dsm_constant(sde, S0, t)

    return f


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), *ZERO_SNR],
                         ids=["vp", "subvp", "ve", "cosine", "zsnr"])
def test_likelihood_weighting_with_and_without_importance_sampling(sde):
    """Against the integral over [eps, sampling_T]; for the zero-terminal-SNR SDEs also against
    its closed form in lambda = log-SNR: g^2 / std^2 = -d lambda / dt and the per-dimension loss
    of the exact score is S0^2 e^lambda / (1 + S0^2 e^lambda), so the integral is
    log(1 + S0^2 e^lambda) between lambda(sampling_T) and lambda(eps)."""
    x = gaussian_data(200_000)
    eps, end = 1e-5, sde.sampling_T
    expected = quad(_likelihood_integrand(sde), eps, end) / (end - eps)
    if sde in ZERO_SNR:
        lam = sde.log_snr(torch.tensor([eps, end], dtype=torch.float64))
        closed = torch.log1p(S0**2 * lam.exp())
        assert expected == pytest.approx((closed[0] - closed[1]).item() / (end - eps), rel=1e-6)
    is_losses = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(3),
                         eps=eps, likelihood_weighting=True, importance_sampling=True)
    assert_mc(is_losses, expected)
    eps = 0.05  # the uniform-t estimator has a 1/t tail: keep its variance finite here
    expected = quad(_likelihood_integrand(sde), eps, end) / (end - eps)
    uniform = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(4),
                       eps=eps, likelihood_weighting=True)
    assert_mc(uniform, expected)


def test_importance_times_follow_g2_over_std2():
    sde, eps = VPSDE(), 1e-3
    t, w = importance_times(sde, 100_000, eps=eps, generator=torch.Generator().manual_seed(5))
    assert eps <= t.min() and t.max() <= 1.0
    density = lambda s: _likelihood_integrand(sde)(s) / gaussian_dsm_constant(sde, S0, s)  # noqa: E731
    z = quad(density, eps, 1.0)
    assert w == pytest.approx(z / (1 - eps), rel=1e-4)
    # P(t < 0.1) under p(t) = (g^2 / std^2) / Z
    assert_mc((t < 0.1).double(), quad(density, eps, 0.1) / z)


def test_importance_sampling_needs_likelihood_weighting():
    with pytest.raises(ValueError, match="likelihood_weighting"):
        dsm_loss(VPSDE(), exact_score(VPSDE()), gaussian_data(4), importance_sampling=True)


def test_ddpm_loss_equals_continuous_loss_at_matching_times():
    """At index i the DDPM kernel N(sqrt(abar_i) x, 1 - abar_i) is the VP kernel at t* with
    log_snr(t*) = log(abar_i / (1 - abar_i)): with the exact scores the losses agree per example."""
    sde = VPSDE()
    x = gaussian_data(4096, shape=(3, 2, 2))
    i = torch.randint(0, sde.N, (x.shape[0],), generator=torch.Generator().manual_seed(6))
    t_i = i.double() / (sde.N - 1)
    abar = sde.alphas_cumprod[i]
    t_star = sde.t_from_log_snr(torch.log(abar / (1 - abar)))

    def discrete_score(x, t):
        a = sde.alphas_cumprod[sde.timestep(t)]
        return -x / (a * S0**2 + 1 - a).reshape(-1, 1, 1, 1)

    ddpm = ddpm_loss(sde, discrete_score, x, generator=torch.Generator().manual_seed(7), t=t_i)
    cont = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(7), t=t_star)
    torch.testing.assert_close(ddpm, cont, rtol=1e-6, atol=1e-8)
    assert_mc(ddpm, (abar * S0**2 / (abar * S0**2 + 1 - abar)).mean().item())


def test_ddpm_loss_is_eps_mse_of_a_step_conditioned_network():
    """Through get_score_fn(prediction=eps, time_input=step) the loss is ||eps_theta(x_i, i) - z||^2
    with the integer label i (Ho et al. 2020, Eq. 14)."""
    sde, seen = VPSDE(), []

    def net(x, cond):
        seen.append(cond)
        return torch.tanh(x) * (1 + cond.reshape(-1, 1) / 1000)

    x = gaussian_data(512, shape=(3,)).float()
    losses = ddpm_loss(sde, get_score_fn(sde, net, prediction="eps", time_input="step"), x,
                       generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    i = torch.randint(0, sde.N, (512,), generator=g)
    z = torch.randn(x.shape, generator=g)
    abar = sde.alphas_cumprod[i].float().reshape(-1, 1)
    x_i = abar.sqrt() * x + (1 - abar).sqrt() * z
    torch.testing.assert_close(seen[0], i.float())
    torch.testing.assert_close(losses, ((net(x_i, i.float()) - z) ** 2).mean(1), rtol=1e-4,
                               atol=1e-5)


def test_smld_loss_uses_the_discrete_sigmas():
    sde = VESDE(N=10)
    x = gaussian_data(2048, shape=(2,))
    t = torch.full((2048,), 4 / 9, dtype=torch.float64)  # index 4
    smld = smld_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(9), t=t)
    cont = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(9), t=t)
    torch.testing.assert_close(sde.discrete_sigmas[4], sde.sigma(t[0]))
    torch.testing.assert_close(smld, cont)
    with pytest.raises(ValueError, match="VESDE"):
        smld_loss(VPSDE(), exact_score(sde), x)
    with pytest.raises(ValueError, match="VPSDE"):
        ddpm_loss(sde, exact_score(sde), x)


def test_reduce_sum_is_dim_times_mean():
    sde, x = VPSDE(), gaussian_data(16, shape=(1, 4, 4))
    kw = dict(t=torch.full((16,), 0.5, dtype=torch.float64))
    mean = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(0), **kw)
    total = dsm_loss(sde, exact_score(sde), x, generator=torch.Generator().manual_seed(0),
                     reduce_mean=False, **kw)
    torch.testing.assert_close(total, 16 * mean)
