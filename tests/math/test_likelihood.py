"""Probability-flow log-likelihood against the mixture's closed-form log p_eps, and bits/dim."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from sde import VESDE, VPSDE, SubVPSDE
from sde.likelihood import bits_per_dim, dequantize, log_likelihood
from sde.oracle import GaussianMixture

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
EPS = 1e-5


def _transport_error(sde, mix, x, logp, z):
    """logp - log p_eps(x) with the prior replaced by the exact p_T: what remains is the ODE
    solver's error alone (the ODE maps p_eps to p_T exactly)."""
    exact = mix.log_prob(x.double(), EPS, sde)
    transported = logp.double() - sde.prior_logp(z.double()) + mix.log_prob(z.double(), sde.T, sde)
    return transported - exact, logp.double() - exact


@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_divergence_matches_closed_form(sde_name, mixture):
    """Exact divergence, rtol = atol = 1e-6: the solver's error on log p is < 2e-3 nats (measured
    <= 7e-4 on the worst example: the batch shares one RMS-controlled step); the prior's mismatch
    with p_T adds < 0.05 nats (measured 0.008 on VP, 0.027 on VE: alpha(T) mu_k != 0 for VP,
    sigma_max^2 vs sigma_max^2 + s_k^2 for VE)."""
    sde = SDES[sde_name]()
    x = mixture.sample(64, torch.Generator().manual_seed(1), dtype=torch.float64)
    logp, z, nfe = log_likelihood(sde, mixture.score_fn(sde), x, hutchinson="exact", rtol=1e-6,
                                  atol=1e-6, eps=EPS)
    assert logp.shape == (64,) and z.shape == x.shape and logp.dtype == torch.float64
    solver_error, total_error = _transport_error(sde, mixture, x, logp, z)
    assert solver_error.abs().max() < 2e-3
    assert total_error.abs().max() < 0.05
    assert nfe > 20


@pytest.mark.parametrize("sde_name", list(SDES))
def test_image_shaped_likelihood(sde_name):
    """(B, 1, 2, 2) data with anisotropic per-pixel stds; exact divergence; solver tolerance as
    above, prior mismatch < 0.2 nats (measured 0.096 on VE, whose |mu_k| reach 3 in D = 4)."""
    sde = SDES[sde_name]()
    mix = GaussianMixture.random(3, (1, 2, 2), spread=1.5, seed=0)
    x = mix.sample(32, torch.Generator().manual_seed(1), dtype=torch.float64)
    logp, z, _ = log_likelihood(sde, mix.score_fn(sde), x, hutchinson="exact", rtol=1e-6,
                                atol=1e-6, eps=EPS)
    assert z.shape == (32, 1, 2, 2)
    solver_error, total_error = _transport_error(sde, mix, x, logp, z)
    assert solver_error.abs().max() < 2e-3 and total_error.abs().max() < 0.2


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("shape", [(2,), (3, 2, 2)])
def test_hutchinson_is_unbiased(probe, shape):
    """The Hutchinson estimate of log p is random but unbiased: over 256 examples the mean of
    (estimate - exact) is within 4 standard errors of 0 (SE = sample std / 16), while the
    estimate really is noisy (std > 1e-3). z does not depend on the probe (solver tolerance)."""
    sde = VPSDE()
    mix = GaussianMixture.random(3, shape, spread=1.5, seed=1)
    x = mix.sample(256, torch.Generator().manual_seed(2), dtype=torch.float64)
    logp, z, _ = log_likelihood(sde, mix.score_fn(sde), x, hutchinson=probe, rtol=1e-6, atol=1e-6,
                                eps=EPS, generator=torch.Generator().manual_seed(3))
    logp_exact, z_exact, _ = log_likelihood(sde, mix.score_fn(sde), x, hutchinson="exact",
                                            rtol=1e-6, atol=1e-6, eps=EPS)
    diff = logp - logp_exact
    assert diff.std() > 1e-3
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff))
    torch.testing.assert_close(z, z_exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_determinism(dtype, mixture):
    sde = VESDE()
    x = mixture.sample(8, torch.Generator().manual_seed(0), dtype=dtype)
    run = lambda seed: log_likelihood(sde, mixture.score_fn(sde), x,
                                      generator=torch.Generator().manual_seed(seed))
    (a, za, nfe), (b, zb, _), (c, _, _) = run(0), run(0), run(1)
    assert a.dtype == za.dtype == dtype and a.shape == (8,)
    assert torch.equal(a, b) and torch.equal(za, zb) and not torch.equal(a, c)
    assert nfe > 0


def test_nfe_counts_score_calls(mixture):
    sde = VPSDE()
    calls = []
    score = mixture.score_fn(sde)
    x = mixture.sample(4, torch.Generator().manual_seed(0))
    _, _, nfe = log_likelihood(sde, lambda x, t: calls.append(1) or score(x, t), x,
                               method="rk4", options={"step_size": 0.1})
    assert nfe == len(calls) == 4 * 10


def test_bad_arguments_raise(mixture):
    sde = VPSDE()
    score = mixture.score_fn(sde)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="hutchinson"):
        log_likelihood(sde, score, x, hutchinson="normal")
    with pytest.raises(ValueError, match="max_exact_dim"):
        log_likelihood(sde, lambda x, t: -x, torch.zeros(2, 3, 16, 16), hutchinson="exact")
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(sde, score, x, eps=0.0)
    with pytest.raises(ValueError, match="ODE method"):
        log_likelihood(sde, score, x, method="RK45")


# --- bits per dimension -----------------------------------------------------------------------

@pytest.mark.parametrize("centered", [True, False])
def test_bits_per_dim_of_uniform_density_is_eight(centered):
    """The uniform density on the model's range ([-1, 1)^D or [0, 1)^D) is the uniform
    distribution over the 256 levels: exactly 8 bits per dimension."""
    d = 3 * 4 * 4
    logp = torch.full((5,), -d * math.log(2.0 if centered else 1.0))
    torch.testing.assert_close(bits_per_dim(logp, torch.zeros(5, 3, 4, 4), centered=centered),
                               torch.full((5,), 8.0))
    torch.testing.assert_close(bits_per_dim(logp, d, centered=centered), torch.full((5,), 8.0))


def test_bits_per_dim_matches_discrete_entropy():
    """Discretised Gaussian data (std 20 levels): E[bits_per_dim] of the matching continuous
    density on dequantized, centered data equals the data's discrete entropy in bits to within
    the Jensen gap (< 1e-3 bits at this width); an error in the offset would be a whole bit."""
    mu, sigma = 127.5, 20.0
    k = torch.arange(256, dtype=torch.float64)
    p_k = stats.norm.cdf((k + 1 - mu) / sigma) - stats.norm.cdf((k - mu) / sigma)
    p_k = torch.as_tensor(p_k) / p_k.sum()
    entropy_bits = -(p_k * torch.log2(p_k)).sum()
    # model space x = 2 (k + u) / 256 - 1: a Gaussian with mean 2 mu / 256 - 1, std 2 sigma / 256
    g = torch.Generator().manual_seed(0)
    ks = torch.multinomial(p_k, 200_000, replacement=True, generator=g).reshape(-1, 1)
    x = 2 * (ks + torch.rand(ks.shape, generator=g, dtype=torch.float64)) / 256 - 1
    logp = torch.as_tensor(stats.norm.logpdf(x.numpy(), 2 * mu / 256 - 1, 2 * sigma / 256)).sum(1)
    bpd = bits_per_dim(logp, x, centered=True)
    assert abs(bpd.mean() - entropy_bits) < 1e-3 + 4 * bpd.std() / math.sqrt(len(bpd))


def test_dequantization_noise_is_uniform_on_each_bin():
    """dequantize(k) = (k + u) / 256 with u ~ U[0, 1): per bin, u lies in [0, 1) with mean 1/2
    and variance 1/12 (4 standard errors: SE(mean) = sqrt(1/12 / n), SE(var) = sqrt(1/180 / n));
    centered data is 2 (k + u) / 256 - 1."""
    n = 100_000
    k = torch.randint(0, 256, (n, 1), generator=torch.Generator().manual_seed(0))
    top = torch.full((1_000_000,), 255)  # float32 (255 + u) / 256 rounds to 1 for u > 1 - 2^-17
    assert dequantize(top, torch.Generator().manual_seed(1), centered=False).max() < 1
    y = dequantize(k.double(), torch.Generator().manual_seed(1), centered=False)
    u = y * 256 - k
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 4 * math.sqrt(1 / 180 / n)
    x = dequantize(k.double(), torch.Generator().manual_seed(1), centered=True)
    torch.testing.assert_close(x, 2 * y - 1)


def test_hutchinson_probe_is_fixed_over_the_integration(mixture):
    """One probe per example for the whole solve makes the ODE smooth: the adaptive solver then
    takes about as many steps as with the exact divergence (measured: the same NFE within 10 %).
    A probe redrawn at every evaluation makes the right-hand side noise and the step-size control
    collapses (several times the NFE)."""
    sde = VPSDE()
    x = mixture.sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda h: log_likelihood(sde, mixture.score_fn(sde), x, hutchinson=h, rtol=1e-5,
                                   atol=1e-5, generator=torch.Generator().manual_seed(1))[2]
    nfe_exact = run("exact")
    for probe in ("rademacher", "gaussian"):
        assert run(probe) <= 1.5 * nfe_exact


def test_nll_of_continuous_data_with_a_centred_scaler():
    """`sde.evaluate`'s nll (`likelihood_metric`) in data space
    = -(log p_model(scaler(y)) + log|det d scaler / dy|).
    Data y ~ N(m, s^2 I) in D = 2, scaler x = 2 y - 1 (log-det D log 2), so the model-space data is
    N(2 m - 1, 4 s^2 I) and the nll must be the closed form -log N(y; m, s^2 I); a flipped sign of
    the log-determinant would be off by 2 D log 2 = 2.77 nats."""
    from types import SimpleNamespace

    from sde.runs.evaluate import likelihood_metric

    m, s, d = 0.6, 0.2, 2
    y = m + s * torch.randn(64, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = VPSDE()
    model_data = GaussianMixture(torch.full((1, d), 2 * m - 1), 2 * s)
    loaded = SimpleNamespace(sde=sde, score_fn=model_data.score_fn(sde), scaler=lambda v: 2 * v - 1)
    result = likelihood_metric(loaded, y, {"name": "npz", "shape": [d]}, batch_size=64, repeats=1,
                               hutchinson="exact", rtol=1e-6, atol=1e-6, eps=1e-5, seed=0,
                               device="cpu", progress=False)
    closed = (0.5 * ((y - m) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)).sum(1)
    assert result["nll"] == pytest.approx(closed.mean().item(), abs=0.02)
