"""v-prediction and EDM preconditioning: a fake network returning the exact v (or the exact EDM
F) of a Gaussian mixture gives the mixture's exact score; EDM's loss of the exact denoiser on
Gaussian data equals its closed form; discrete-chain options refuse SDEs without a chain."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from sde.losses import ddpm_loss, edm_loss
from sde.models import MLP, edm_coefficients, get_score_fn
from sde.oracle import GaussianMixture
from sde.utils import append_dims

MIX = GaussianMixture([[-0.6, -0.4], [0.5, -0.3], [0.0, 0.6]], [0.05, 0.08, 0.12], [0.5, 0.3, 0.2])
SDES = [VPSDE(), SubVPSDE(), VESDE(), CosineVPSDE(), VPSDE(zero_terminal_snr=True)]
IDS = ["vp", "subvp", "ve", "cosine", "zsnr"]
TIMES = [1e-3, 0.05, 0.3, 0.7, 0.95, 0.999, 1.0]


def posterior(sde, x, t):
    """Exact E[x_0 | x_t] and E[eps | x_t] of the mixture, with alpha(t), std(t) (B, 1)."""
    alpha, std = (append_dims(v, x.ndim) for v in sde.marginal_coeffs(t))
    score = MIX.score(x, t, sde)
    eps = -std * score
    x0 = MIX.denoiser(sde)(x, t) if (alpha > 0).all() else None
    return x0, eps, alpha, std, score


class ExactV(nn.Module):
    """Returns v = alpha eps - std x0 (Salimans & Ho 2022) from the posterior means; sees 999 t."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def forward(self, x, cond):
        t = cond / 999.0
        alpha, std = (append_dims(v, x.ndim) for v in self.sde.marginal_coeffs(t))
        score = MIX.score(x, t, self.sde)
        eps = -std * score
        x0 = (x - std * eps) / alpha.clamp_min(1e-300)  # x = alpha x0 + std eps
        x0 = torch.where(alpha > 0, x0, torch.zeros_like(x0))  # anything finite at alpha = 0
        return alpha * eps - std * x0


class ExactF(nn.Module):
    """Returns EDM's F = (D - c_skip y) / c_out (Karras et al. 2022, Eq. 7, Table 1) for the exact
    denoiser D, from the input c_in y and c_noise = ln(sigma) / 4 only: sigma = exp(4 c_noise),
    y = input sqrt(sigma^2 + sd^2), t from sigma by bisection on std / alpha."""

    def __init__(self, sde, sigma_data):
        super().__init__()
        self.sde, self.sd = sde, sigma_data

    def time_of(self, sigma):
        lo, hi = torch.zeros_like(sigma), torch.ones_like(sigma)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            a, s = self.sde.marginal_coeffs(mid)
            below = s / a < sigma
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        s2 = append_dims(sigma**2, x_in.ndim)
        y = x_in * torch.sqrt(s2 + self.sd**2)
        t = self.time_of(sigma)
        alpha = append_dims(self.sde.marginal_coeffs(t)[0], x_in.ndim)
        denoised = MIX.denoiser(self.sde)(alpha * y, t)
        c_skip = self.sd**2 / (s2 + self.sd**2)
        c_out = torch.sqrt(s2) * self.sd / torch.sqrt(s2 + self.sd**2)
        return (denoised - c_skip * y) / c_out


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_exact_v_gives_the_exact_score(sde):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(TIMES, dtype=torch.float64)
    x = MIX.sample(len(TIMES), g, dtype=torch.float64)
    alpha, std = (append_dims(v, 2) for v in sde.marginal_coeffs(t))
    x_t = alpha * x + std * torch.randn(x.shape, generator=g, dtype=torch.float64)
    score = get_score_fn(sde, ExactV(sde), prediction="v")(x_t, t)
    torch.testing.assert_close(score, MIX.score(x_t, t, sde), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_exact_edm_F_gives_the_exact_score(sde):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor(TIMES[:-1], dtype=torch.float64)  # alpha > 0 (alpha = 0: next test)
    x = MIX.sample(len(t), g, dtype=torch.float64)
    alpha, std = (append_dims(v, 2) for v in sde.marginal_coeffs(t))
    x_t = alpha * x + std * torch.randn(x.shape, generator=g, dtype=torch.float64)
    score = get_score_fn(sde, ExactF(sde, 0.3), prediction="edm", sigma_data=0.3)(x_t, t)
    torch.testing.assert_close(score, MIX.score(x_t, t, sde), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("time_input", ["t", "log_sigma"])
@pytest.mark.parametrize("prediction", ["v", "edm", "eps", "x0"])
def test_zero_terminal_snr_score_is_finite_and_exact_at_T(prediction, time_input):
    """At alpha = 0, p_T = N(0, I): every parametrisation gives -x, whatever the network says."""
    sde, x = CosineVPSDE(), torch.randn(4, 2)
    net = MLP(dim=2, hidden=16, num_layers=1, emb_dim=8, embedding_type="fourier", fourier_scale=4)
    score = get_score_fn(sde, net, prediction=prediction, time_input=time_input)(x, torch.ones(4))
    if prediction in ("v", "edm"):
        torch.testing.assert_close(score, -x)
    assert torch.isfinite(score).all()


def test_log_sigma_time_input_is_edm_c_noise():
    """time_input="log_sigma": the network sees ln(sigma) / 4 with sigma = std / alpha (VE: sigma_min
    (sigma_max / sigma_min)^t; cosine: ln((1 - alpha^2) / alpha^2) / 8 with Nichol & Dhariwal's
    alpha^2), whatever the prediction."""
    seen = []

    def net(x, cond):
        seen.append(cond)
        return torch.zeros_like(x)
    t = torch.tensor([1e-3, 0.3, 0.9], dtype=torch.float64)
    get_score_fn(VESDE(0.01, 6.0), net, prediction="eps", time_input="log_sigma")(
        torch.zeros(3, 2, dtype=torch.float64), t)
    torch.testing.assert_close(seen[-1], torch.log(0.01 * 600.0**t) / 4, rtol=1e-12, atol=0)
    get_score_fn(CosineVPSDE(), net, prediction="v", time_input="log_sigma")(
        torch.zeros(3, 2, dtype=torch.float64), t)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    a2 = torch.tensor([f(u) / f(0.0) for u in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(seen[-1], torch.log((1 - a2) / a2) / 8, rtol=1e-10, atol=0)


def test_edm_coefficients_are_karras_table_1():
    sigma, sd = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64), 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sd)
    for k, s in enumerate(sigma.tolist()):
        assert c_skip[k].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
        assert c_out[k].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert c_in[k].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert c_noise[k].item() == pytest.approx(math.log(s) / 4, rel=1e-14)


def _gaussian_denoiser_score(sde, c):
    """Exact score of N(0, c^2 I) data under `sde`."""
    def score_fn(x, t):
        alpha, std = (append_dims(v, x.ndim) for v in sde.marginal_coeffs(t.to(x.dtype)))
        return -x / (alpha**2 * c**2 + std**2)
    return score_fn


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(), CosineVPSDE()],
                         ids=["ve", "vp", "cosine"])
@pytest.mark.parametrize("c", [0.5, 0.2])
def test_edm_loss_of_the_exact_denoiser_is_its_closed_form(sde, c):
    """Data N(0, c^2 I): E||D - x0||^2 / dim = c^2 sigma^2 / (c^2 + sigma^2), so with EDM's weight
    the loss is c^2 (sigma^2 + sd^2) / (sd^2 (c^2 + sigma^2)) per dimension (1 when c = sd)."""
    n, d, sd = 20000, 4, 0.5
    g = torch.Generator().manual_seed(3)
    t = torch.full((n,), 0.6, dtype=torch.float64)
    x = c * torch.randn(n, d, generator=g, dtype=torch.float64)
    loss = edm_loss(sde, _gaussian_denoiser_score(sde, c), x, generator=g, sigma_data=sd, t=t)
    alpha, std = sde.marginal_coeffs(t[:1])
    sigma2 = (std / alpha).item() ** 2
    expected = c**2 * (sigma2 + sd**2) / (sd**2 * (c**2 + sigma2))
    se = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - expected) < 4 * se


def test_edm_loss_draws_log_normal_sigma():
    """With t drawn, ln sigma(t) ~ N(P_mean, P_std^2) (within the SDE's range): recorded through
    the score function's t."""
    sde, seen = VESDE(1e-4, 1e4), []

    def score_fn(x, t):
        seen.append(t)
        return -x
    edm_loss(sde, score_fn, torch.zeros(20000, 1), generator=torch.Generator().manual_seed(0))
    alpha, std = sde.marginal_coeffs(seen[0].double())
    log_sigma = torch.log(std / alpha)
    assert abs(log_sigma.mean().item() + 1.2) < 4 * 1.2 / math.sqrt(20000)
    assert abs(log_sigma.std().item() / 1.2 - 1) < 0.02


@pytest.mark.parametrize("sde", [SubVPSDE(), VESDE()], ids=["subvp", "ve"])
def test_ddpm_loss_and_step_input_refuse_sdes_without_a_ddpm_chain(sde):
    x, name = torch.randn(4, 2), type(sde).__name__
    with pytest.raises(ValueError, match=f"{name} has no DDPM chain.*loss=dsm"):
        ddpm_loss(sde, lambda x, t: -x, x)
    score_fn = get_score_fn(sde, MLP(dim=2, hidden=16, num_layers=1, emb_dim=8), time_input="step")
    with pytest.raises(ValueError, match=f"{name} has no DDPM chain.*time_input=t"):
        score_fn(x, torch.rand(4))


def test_ddpm_loss_runs_on_the_cosine_chain():
    """Data N(0, I), exact score -x: the eps-error is sqrt(abar)(sqrt(abar) z - sqrt(1 - abar) x),
    so the loss per dimension is abar_i, here Nichol & Dhariwal's abar at step i, N = 50."""
    n, i = 50, torch.tensor([0, 10, 30, 49])
    f = [math.cos((k / n + 0.008) / 1.008 * math.pi / 2) ** 2 for k in range(n + 1)]
    abar = torch.cumprod(torch.tensor([1 - min(1 - f[k + 1] / f[k], 0.999) for k in range(n)],
                                      dtype=torch.float64), 0)[i]
    x = torch.randn(4, 20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = ddpm_loss(CosineVPSDE(N=n), lambda x, t: -x, x, generator=torch.Generator(),
                     t=i.double() / (n - 1))
    torch.testing.assert_close(loss, abar, rtol=0.05, atol=1e-3)
