"""Cosine and zero-terminal-SNR schedules against their papers' formulas, written here
independently in numpy / math: kernels, drifts, discrete chains, sampling start time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE
from sde.sampling.grids import get_time_grid

T_GRID = np.array([0.0, 1e-5, 1e-3, 0.1, 0.37, 0.5, 0.8, 0.95, 0.999, 1.0])


def cosine_alpha2(t, s=0.008):
    """Nichol & Dhariwal (2021), Eq. 17: abar(t) = f(t) / f(0), f = cos^2((t + s) / (1 + s) pi/2)."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def linear_vp_alpha(t, b0=0.1, b1=20.0):
    return np.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)


def zsnr_alpha(t):
    """Lin et al. (2024), Alg. 1 in continuous time: shift alpha so that alpha(1) = 0, scale so
    that alpha(0) = 1."""
    a, a_T = linear_vp_alpha(t), linear_vp_alpha(1.0)
    return (a - a_T) / (1 - a_T)


def _coeffs(sde, t):
    alpha, std = sde.marginal_coeffs(torch.tensor(t, dtype=torch.float64))
    return alpha.numpy(), std.numpy()


@pytest.mark.parametrize("s", [0.008, 0.0, 0.05])
def test_cosine_kernel_is_nichol_dhariwal(s):
    alpha, std = _coeffs(CosineVPSDE(s=s), T_GRID)
    np.testing.assert_allclose(alpha**2, cosine_alpha2(T_GRID, s), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(std**2, 1 - cosine_alpha2(T_GRID, s), rtol=1e-10, atol=1e-15)
    assert alpha[-1] == 0.0 and std[-1] == 1.0  # exactly zero terminal SNR


def test_zero_terminal_snr_kernel_is_lin_et_al():
    alpha, std = _coeffs(VPSDE(zero_terminal_snr=True), T_GRID)
    np.testing.assert_allclose(alpha, zsnr_alpha(T_GRID), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(std**2, 1 - zsnr_alpha(T_GRID) ** 2, rtol=1e-10, atol=1e-15)
    assert alpha[-1] == 0.0 and alpha[0] == 1.0


def test_small_t_std_keeps_its_digits_in_float32():
    """std^2 ~ beta(0) t at small t: computed as 1 - alpha^2 in float32 it would lose ~40 %."""
    t = np.array([1e-5, 1e-4])
    for sde, a2 in [(CosineVPSDE(), cosine_alpha2(t)), (VPSDE(zero_terminal_snr=True),
                                                        zsnr_alpha(t) ** 2)]:
        std = sde.marginal_coeffs(torch.tensor(t, dtype=torch.float32))[1].double().numpy()
        np.testing.assert_allclose(std**2, 1 - a2, rtol=1e-5)


@pytest.mark.parametrize("sde", [CosineVPSDE(), VPSDE(zero_terminal_snr=True)],
                         ids=["cosine", "zsnr"])
def test_drift_and_diffusion_generate_the_kernel(sde):
    """For dx = -beta x / 2 dt + sqrt(beta) dw: d log alpha / dt = -beta / 2 and the kernel
    variance solves d std^2 / dt = -beta std^2 + beta. Derivatives by central differences of
    the closed forms above."""
    t, h = np.linspace(0.02, 0.98, 25), 1e-6
    a2 = cosine_alpha2 if isinstance(sde, CosineVPSDE) else (lambda u: zsnr_alpha(u) ** 2)
    beta = -(np.log(a2(t + h)) - np.log(a2(t - h))) / (2 * h)
    x = torch.ones(len(t), 1, dtype=torch.float64)
    drift, g = sde.sde(x, torch.tensor(t))
    np.testing.assert_allclose(g.numpy() ** 2, beta, rtol=1e-6)
    np.testing.assert_allclose(drift[:, 0].numpy(), -0.5 * beta, rtol=1e-6)


@pytest.mark.parametrize("sde", [CosineVPSDE(), VPSDE(zero_terminal_snr=True)],
                         ids=["cosine", "zsnr"])
def test_prior_is_exactly_the_kernel_at_T(sde):
    alpha, std = _coeffs(sde, [sde.T])
    assert alpha[0] == 0.0 and std[0] == pytest.approx(sde.prior_std, abs=0)
    z = torch.randn(5, 3, dtype=torch.float64)
    expected = -0.5 * 3 * math.log(2 * math.pi) - 0.5 * (z**2).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


@pytest.mark.parametrize("sde", [CosineVPSDE(), VPSDE(zero_terminal_snr=True)],
                         ids=["cosine", "zsnr"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alpha_is_zero_and_beta_infinite_at_T_in_every_dtype(sde, dtype):
    """alpha(T) = 0 exactly (not a rounding error below 0) and beta(T) = +inf, never NaN."""
    t = torch.tensor([sde.T], dtype=dtype)
    assert sde.marginal_coeffs(t)[0].item() == 0.0
    assert math.isinf(sde.sde(torch.ones(1, 2, dtype=dtype), t)[1].item())


def test_log_snr_inverse_is_exact():
    for sde in (CosineVPSDE(), VPSDE(zero_terminal_snr=True), CosineVPSDE(s=0.02, N=10)):
        t = torch.linspace(1e-4, 0.999, 50, dtype=torch.float64)
        torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-9)


def test_cosine_chain_is_improved_diffusion():
    """betas_for_alpha_bar of Nichol & Dhariwal: beta_i = min(1 - abar((i+1)/N) / abar(i/N), 0.999)."""
    n = 1000
    expected = np.array([min(1 - cosine_alpha2((i + 1) / n) / cosine_alpha2(i / n), 0.999)
                         for i in range(n)])
    sde = CosineVPSDE(N=n)
    np.testing.assert_allclose(sde.discrete_betas.numpy(), expected, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(sde.alphas_cumprod.numpy(), np.cumprod(1 - expected), rtol=1e-10)
    assert sde.discrete_betas.max().item() == 0.999


def test_zero_snr_chain_is_lin_et_al_algorithm_1():
    """Lin et al. (2024) Alg. 1 on DDPM's linear betas 1e-4..0.02, step by step in numpy."""
    betas = np.linspace(1e-4, 0.02, 1000)
    sqrt_abar = np.sqrt(np.cumprod(1 - betas))
    a0, a_T = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - a_T) * a0 / (a0 - a_T)
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    sde = VPSDE(zero_terminal_snr=True)
    np.testing.assert_allclose(sde.discrete_betas.numpy(), 1 - alphas, rtol=1e-9, atol=1e-15)
    assert sde.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-30)
    assert sde.discrete_betas[-1].item() == 1.0


def test_plain_vp_chain_is_still_ddpm():
    """VPSDE(0.1, 20, 1000): Ho et al.'s linspace(1e-4, 0.02, 1000) and its cumulative product;
    the chain's kernel (discrete_marginal) is sqrt(abar_i), sqrt(1 - abar_i)."""
    sde, betas = VPSDE(), np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(sde.alphas_cumprod.numpy(), abar, rtol=1e-12)
    i = torch.tensor([0, 17, 500, 999])
    alpha, std = sde.discrete_marginal(i, torch.zeros(1, dtype=torch.float64), chain="ddpm")
    np.testing.assert_allclose(alpha.numpy(), np.sqrt(abar[i.numpy()]), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), np.sqrt(1 - abar[i.numpy()]), rtol=1e-12)
    sigma = VESDE().discrete_marginal(i, torch.zeros(1), chain="smld")[1]
    np.testing.assert_allclose(sigma.numpy(), np.geomspace(0.01, 50, 1000)[i.numpy()], rtol=1e-5)


@pytest.mark.parametrize("sde,chain", [(SubVPSDE(), None), (SubVPSDE(), "ddpm"),
                                       (VESDE(), "ddpm"), (VPSDE(), "smld")])
def test_discrete_marginal_refuses_without_the_chain(sde, chain):
    with pytest.raises(ValueError, match=f"{type(sde).__name__} has no .*loss=dsm"):
        sde.discrete_marginal(torch.zeros(1, dtype=torch.long), torch.zeros(1), chain=chain)


def test_sampling_starts_below_T_only_where_alpha_T_is_zero():
    for sde in (VPSDE(), SubVPSDE(), VESDE()):
        assert sde.sampling_T == sde.T
    for sde in (CosineVPSDE(), VPSDE(zero_terminal_snr=True)):
        t0 = sde.sampling_T
        assert 0.9 < t0 < sde.T
        alpha, std = _coeffs(sde, [t0])
        assert math.log(alpha[0] ** 2 / std[0] ** 2) == pytest.approx(sde.min_log_snr, abs=1e-9)
        for grid in ("uniform", "logsnr", "edm", "quadratic", "trailing"):
            g = get_time_grid(sde, 8, grid, eps=1e-3)
            assert g[0].item() == t0 and torch.isfinite(g).all()


def test_trailing_grid_is_lin_et_al():
    """Lin et al. (2024, Table 2) trailing: round(arange(N, 0, -N / S)) - 1 over N = 1000 steps,
    i.e. 999, 979, ..., 19 for S = 50: S uniform steps anchored at the last step, the smallest
    time one step above the end (here: eps), which the sampler's final jump covers."""
    sde, steps = VPSDE(), 50
    g = get_time_grid(sde, steps, "trailing", eps=1e-3)
    assert g[0].item() == 1.0 and (g.diff() < 0).all()
    np.testing.assert_allclose(g.numpy(), 1.0 - np.arange(steps) * (1.0 - 1e-3) / steps,
                               rtol=1e-12)
    discrete = (np.round(np.arange(1000, 0, -1000 / steps)) - 1) / 999  # as times i / (N - 1)
    np.testing.assert_allclose(g.numpy(), discrete, atol=2.5e-3)  # index conventions: <= 2 steps


def test_new_sdes_rebuild_from_hparams():
    for sde in (CosineVPSDE(s=0.01, N=50), VPSDE(zero_terminal_snr=True, N=50)):
        copy = type(sde)(**sde.hparams())
        torch.testing.assert_close(copy.discrete_betas, sde.discrete_betas)
        assert repr(copy) == repr(sde)
    with pytest.raises(ValueError, match="s must be"):
        CosineVPSDE(s=-0.1)
