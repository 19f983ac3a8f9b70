"""PC and probability-flow ODE samplers reproduce a 2-D Gaussian mixture from its exact score.

Budget: N = 200 steps and n = 2000 samples for the stochastic samplers, where the O(1/N)
bias measured with 20 000 samples is at most 0.011 on a weight and 2.3 % on a spread (Langevin
corrector on VE); the allowances below (0.015, 3 %) sit just above it, the statistical part of
each tolerance is 4 SE (see conftest). A sign or factor error in a drift, a step size or a noise
scale moves a spread by far more (e.g. dropping the 1/2 of the probability-flow drift, or the
sqrt(2) of the Langevin noise, changes spreads by > 20 %).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE, sampling
from sde.oracle import GaussianMixture
from sde.utils import PerSampleGenerator

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
PREDICTORS = ["euler_maruyama", "reverse_diffusion", "ancestral_sampling"]
CORRECTORS = ["langevin", "ald", "none"]
N_SAMPLES = 2000
ED_MAX = 1.2e-2  # the largest of 200 null draws at n = 2000 (conftest)


def _pairs():
    for sde, pred, corr in itertools.product(SDES, PREDICTORS, CORRECTORS):
        if not (sde == "subvp" and pred == "ancestral_sampling"):
            yield sde, pred, corr


@pytest.mark.parametrize("sde_name,predictor,corrector", list(_pairs()))
def test_pc_reproduces_mixture(sde_name, predictor, corrector, mixture, reference, check):
    sde = SDES[sde_name](N=200)
    x, nfe = sampling.pc_sample(sde, mixture.score_fn(sde), (N_SAMPLES, 2), predictor=predictor,
                                corrector=corrector, generator=torch.Generator().manual_seed(0))
    assert nfe == sde.N * (1 + (corrector != "none"))
    check(mixture, x, weight_bias=0.015, spread_bias=0.03, reference=reference, ed_max=ED_MAX)


# Corrector-only allowances (weight, spread), measured at N = 100 x 5 steps, snr 0.2, 4000
# samples: Langevin <= 0.023 / 4 %; ALD on VE 0.036 / 15 %; ALD on VP and sub-VP 0.01 / 30 %
# (ALD's step 2 (snr std(t))^2 only mixes at the scale std(t), which passes the modes' widths
# within a few of VP's steps).
CORRECTOR_ONLY_BIAS = {"langevin": (0.03, 0.06), ("ald", "ve"): (0.045, 0.2), "ald": (0.03, 0.35)}


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_corrector_only_sampling(sde_name, corrector, mixture, check):
    """Predictor 'none': annealed Langevin alone. It needs many more steps than PC, so the
    allowances are wider (above); the corrector's math is checked tightly by
    `test_corrector_relaxes_to_p_t` and `test_corrector_step_formulas`."""
    sde = SDES[sde_name](N=100)
    x, nfe = sampling.pc_sample(sde, mixture.score_fn(sde), (2000, 2), predictor="none",
                                corrector=corrector, snr=0.2, n_steps=5,
                                generator=torch.Generator().manual_seed(0))
    assert nfe == 500
    weight_bias, spread_bias = CORRECTOR_ONLY_BIAS.get((corrector, sde_name),
                                                       CORRECTOR_ONLY_BIAS[corrector])
    check(mixture, x, weight_bias=weight_bias, spread_bias=spread_bias)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_corrector_step_formulas(sde_name):
    """One step of each corrector against Algorithms 4-5 of Song et al. (score_sde's form):
    x_mean = x + h score, x = x_mean + sqrt(2 h) z, with h = 2 alpha_i (snr |z| / |score|)^2
    (norms averaged over the batch) for Langevin and h = 2 alpha_i (snr std(t))^2 for ALD."""
    sde = SDES[sde_name](N=100)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    score_fn = lambda x, t: -2.0 * x + 0.1
    score = score_fn(x, t)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha = sde.langevin_scale(t)
    ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()
    steps = {"langevin": 2 * alpha * (0.3 * ratio) ** 2,
             "ald": 2 * alpha * (0.3 * sde.marginal_coeffs(t)[1]) ** 2}
    if sde_name != "ve":
        i = sde.timestep(t)
        torch.testing.assert_close(alpha, 1 - sde.discrete_betas[i])
    for name, h in steps.items():
        corr = sampling.get_corrector(name)(sde, score_fn, 0.3, 1)
        x_new, x_mean = corr.update_fn(x, t, torch.Generator().manual_seed(1))
        h = h.reshape(4, 1, 1, 1)
        torch.testing.assert_close(x_mean, x + h * score)
        torch.testing.assert_close(x_new, x + h * score + torch.sqrt(2 * h) * z)


def forward_sde(sde, x, t):
    """(f(x, t), g(t)) written out from Song et al. (2021): VP Eq. 11, sub-VP Eq. 12 (int_0^t
    beta = beta_min t + (beta_max - beta_min) t^2 / 2), VE Eq. 30 (g = sigma(t) sqrt(2 log
    (sigma_max / sigma_min)))."""
    if isinstance(sde, VESDE):
        sigma = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
        return torch.zeros_like(x), sigma * math.sqrt(2 * math.log(sde.sigma_max / sde.sigma_min))
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    g2 = beta
    if isinstance(sde, SubVPSDE):
        g2 = beta * (1 - torch.exp(-2 * (sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min)
                                         * t**2)))
    return -0.5 * beta[:, None] * x, g2.sqrt()


def forward_chain(sde, x, t):
    """(f_i, G_i) of the discrete forward step: DDPM's x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i)
    z with beta_i = (beta_min + i (beta_max - beta_min) / (N - 1)) / N (Eq. 8, 44), SMLD's G_i =
    sqrt(sigma_i^2 - sigma_{i-1}^2), sigma_{-1} = 0 (Eq. 45), sub-VP Euler-Maruyama (dt = T / N),
    i = floor(t (N - 1) / T) as in score_sde."""
    n = sde.N
    i = torch.floor(t * (n - 1) / sde.T + 1e-4)
    if isinstance(sde, VPSDE):
        beta = (sde.beta_min + i / (n - 1) * (sde.beta_max - sde.beta_min)) / n
        return (torch.sqrt(1 - beta)[:, None] - 1) * x, beta.sqrt()
    if isinstance(sde, VESDE):
        sigma = lambda j: sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (j / (n - 1))
        previous = torch.where(i == 0, torch.zeros_like(i), sigma(i - 1))
        return torch.zeros_like(x), torch.sqrt(sigma(i) ** 2 - previous**2)
    f, g = forward_sde(sde, x, t)
    return f * sde.T / n, g * math.sqrt(sde.T / n)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("probability_flow", [False, True])
def test_predictor_step_formulas(sde_name, probability_flow):
    """One step of Euler-Maruyama (x + (f - w g^2 score)(-dt) + g sqrt(dt) z, dt = T / N) and of
    reverse diffusion (x - (f_i - w G_i^2 score) + G_i z), w = 1/2 and no noise for the PF ODE,
    with f, g, f_i, G_i from the formulas above (not from the SDE classes)."""
    sde = SDES[sde_name](N=100)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(4, generator=g, dtype=torch.float64)
    score_fn = lambda x, t: -x / (1 + t[:, None])
    w, noisy = (0.5, 0.0) if probability_flow else (1.0, 1.0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f, diffusion = forward_sde(sde, x, t)
    expected_em = (x - (f - w * diffusion[:, None] ** 2 * score_fn(x, t)) / 100
                   + noisy * diffusion[:, None] * 0.1 * z)
    fd, G = forward_chain(sde, x, t)
    expected_rd = x - (fd - w * G[:, None] ** 2 * score_fn(x, t)) + noisy * G[:, None] * z
    for name, expected in (("euler_maruyama", expected_em), ("reverse_diffusion", expected_rd)):
        predictor = sampling.get_predictor(name)(sde, score_fn, probability_flow)
        x_new, _ = predictor.update_fn(x, t, torch.Generator().manual_seed(1))
        torch.testing.assert_close(x_new, expected)


def _time_with_std(sde, target: float) -> float:
    """t with marginal std(t) = target, by bisection."""
    lo, hi = 0.0, sde.T
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        std = sde.marginal_coeffs(torch.tensor([mid], dtype=torch.float64))[1].item()
        lo, hi = (mid, hi) if std < target else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("corrector", ["langevin", "ald"])
def test_corrector_relaxes_to_p_t(sde_name, corrector, mixture, check):
    """At a fixed t with std(t) = 0.4 (modes still apart), 150 corrector steps started from
    samples with half of p_t's spread must reach p_t's spreads: the initial variance deficit
    decays as (1 - h / v)^(2 n) < 1e-3 at the step sizes of snr 0.16, and unadjusted Langevin's
    own bias is about h / (4 v) < 2 % on a spread. (Not from zero spread: there the score
    vanishes and the SNR rule's step blows up.)"""
    sde = SDES[sde_name](N=1000)
    t = _time_with_std(sde, 0.4)
    alpha, std = (c.item() for c in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    exact, labels = mixture.sample_marginal(sde, t, 4000, torch.Generator().manual_seed(3),
                                            return_labels=True)
    centres = (alpha * mixture.means[labels]).float()
    x0 = centres + 0.5 * (exact - centres)  # (n, 2): half of p_t's spread
    corr = sampling.get_corrector(corrector)(sde, mixture.score_fn(sde), 0.16, 150)
    x, x_mean = corr.update_fn(x0, torch.full((4000,), t), torch.Generator().manual_seed(4))
    check(mixture, x, alpha=alpha, std=std, spread_bias=0.03)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
def test_probability_flow_predictors(sde_name, predictor, mixture, check):
    """probability_flow=True: Euler steps of the PF ODE. Reverse diffusion's PF step is only
    first-order accurate with a large constant (the discrete chain's f = (sqrt(1 - beta_i) - 1) x
    overshoots the continuous drift by beta_i^2 / 8 per step: +15 % spread at N = 100, +7 % at
    N = 200), so this runs at N = 1000, where the measured bias is <= 3.0 % (VE reverse diffusion;
    1.8 % on VP, 2.1 % for VE Euler), allowance 4 %."""
    sde = SDES[sde_name](N=1000)
    x, nfe = sampling.pc_sample(sde, mixture.score_fn(sde), (2000, 2), predictor=predictor,
                                corrector="none", probability_flow=True,
                                generator=torch.Generator().manual_seed(0))
    assert nfe == 1000
    check(mixture, x, weight_bias=0.015, spread_bias=0.04)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_ode_sampler_reproduces_mixture(sde_name, mixture, reference, check):
    """dopri5 at rtol = atol = 1e-5: measured bias <= 0.7 % on a spread."""
    sde = SDES[sde_name]()
    x, nfe = sampling.ode_sample(sde, mixture.score_fn(sde), (N_SAMPLES, 2),
                                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float32
    assert 20 < nfe < 400
    check(mixture, x, weight_bias=0.01, spread_bias=0.01, reference=reference, ed_max=ED_MAX)


def test_ode_sampler_fixed_grid_and_denoise(mixture, check):
    sde = VPSDE(N=100)
    x, nfe = sampling.ode_sample(sde, mixture.score_fn(sde), (2000, 2), method="rk4",
                                 denoise=True, generator=torch.Generator().manual_seed(0))
    assert nfe == 4 * 100 + 1  # rk4: 4 evaluations per step, + the denoising step
    check(mixture, x, weight_bias=0.01, spread_bias=0.02)


def test_pf_ode_encode_decode_roundtrip(mixture):
    """Encoding data to latents and decoding them back is the identity to solver tolerance (this
    alone holds for any drift: see the next test for the latent itself)."""
    sde = VPSDE()
    x = mixture.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    z, _ = sampling.solve_pf_ode(sde, mixture.score_fn(sde), x, 1e-3, 1.0, rtol=1e-8, atol=1e-8)
    x_back, _ = sampling.solve_pf_ode(sde, mixture.score_fn(sde), z, 1.0, 1e-3, rtol=1e-8,
                                      atol=1e-8)
    assert (z - x).abs().max() > 0.5
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)


def vp_alpha_std(sde, t: float) -> tuple[float, float]:
    """alpha(t), std(t) of VP (Song et al. 2021, Eq. 33), written out."""
    alpha = math.exp(-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
    return alpha, math.sqrt(1 - alpha**2)


def test_pf_ode_encodes_gaussian_data_to_its_closed_form_latent():
    """For p_0 = N(mu, s^2 I) the probability-flow ODE is linear: x_t = alpha_t mu + r_t / r_s
    (x_s - alpha_s mu), r = sqrt(alpha^2 s^2 + std^2). Dropping the 1/2 of Eq. 13 or a sign in
    the drift moves the latent by O(1)."""
    sde, mu, s, eps = VPSDE(), 0.7, 0.4, 1e-3
    gauss = GaussianMixture(torch.full((1, 3), mu), s)
    x = gauss.sample(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    z, _ = sampling.solve_pf_ode(sde, gauss.score_fn(sde), x, eps, 1.0, rtol=1e-9, atol=1e-9)
    (a0, s0), (a1, s1) = vp_alpha_std(sde, eps), vp_alpha_std(sde, 1.0)
    r0, r1 = math.hypot(a0 * s, s0), math.hypot(a1 * s, s1)
    torch.testing.assert_close(z, a1 * mu + r1 / r0 * (x - a0 * mu), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ode_denoise_is_one_explicit_reverse_diffusion_mean_step(sde_name, mixture):
    """denoise=True = the plain ODE result x plus score_sde's last reverse-diffusion mean at
    t = eps (chain index 0): VP x + (1 - sqrt(1 - beta_0)) x + beta_0 score with beta_0 =
    beta_min / N; VE x + sigma_min^2 score (G_0^2 = sigma_0^2 - 0). One more NFE."""
    sde, eps = SDES[sde_name](), 1e-3
    score_fn = mixture.score_fn(sde)
    run = lambda d: sampling.ode_sample(sde, score_fn, (64, 2), denoise=d, eps=eps, rtol=1e-6,
                                        atol=1e-6, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(0))
    (x, nfe), (x_denoised, nfe_denoised) = run(False), run(True)
    score = score_fn(x, torch.full((64,), eps, dtype=torch.float64))
    if sde_name == "vp":
        beta_0 = sde.beta_min / sde.N
        expected = (2 - math.sqrt(1 - beta_0)) * x + beta_0 * score
    else:
        expected = x + sde.sigma_min**2 * score
    assert nfe_denoised == nfe + 1
    assert (expected - x).abs().max() > 1e-5  # the step does something
    torch.testing.assert_close(x_denoised, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.xfail(strict=True, reason="KNOWN BIAS (hence not the pc default): a per-example "
                   "SNR step h = 2 a (snr |z_b| / |score_b|)^2 depends on the state x (|score| -> 0 at a "
                   "mode's centre, so h explodes there); unadjusted Langevin with a state-dependent "
                   "step is biased. Measured at 4000 samples: spreads x1.9-x9 and weights off by "
                   "0.13 (VP and VE, N = 200 and 1000). The batch mean (per_example=False) passes.")
@pytest.mark.parametrize("sde_name", list(SDES))
def test_per_example_langevin_reproduces_mixture(sde_name, mixture, reference, check):
    """`corrector_options={"per_example": True}` (the pc default until it was found biased here):
    the same budget and allowances as test_pc_reproduces_mixture."""
    sde = SDES[sde_name](N=200)
    x, nfe = sampling.pc_sample(sde, mixture.score_fn(sde), (N_SAMPLES, 2),
                                corrector_options={"per_example": True},
                                generator=torch.Generator().manual_seed(0))
    assert nfe == 2 * sde.N
    check(mixture, x, weight_bias=0.015, spread_bias=0.03, reference=reference, ed_max=ED_MAX)


def test_per_example_langevin_step_and_batch_independence():
    """h_b = 2 alpha_i (snr |z_b| / |score_b|)^2 per example b (Algorithm 5 without the batch
    mean), so with per-sample seeds sample b does not depend on its batch companions."""
    sde, snr = VPSDE(N=100), 0.3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    score_fn = lambda x, t: -2.0 * x * (1 + t[:, None]) + 0.1
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    i = torch.floor(t * 99 + 1e-4)
    alpha = 1 - (sde.beta_min + i / 99 * (sde.beta_max - sde.beta_min)) / 100
    h = (2 * alpha * (snr * z.norm(dim=1) / score_fn(x, t).norm(dim=1)) ** 2)[:, None]
    corr = sampling.get_corrector("langevin")(sde, score_fn, snr, 1, per_example=True)
    x_new, x_mean = corr.update_fn(x, t, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x_mean, x + h * score_fn(x, t))
    torch.testing.assert_close(x_new, x + h * score_fn(x, t) + torch.sqrt(2 * h) * z)
    mix = GaussianMixture.ring(3, radius=1.5, std=0.3)
    run = lambda seeds: sampling.pc_sample(sde, mix.score_fn(sde), (len(seeds), 2),
                                           corrector_options={"per_example": True},
                                           generator=PerSampleGenerator(seeds))[0]
    torch.testing.assert_close(run([1, 2, 3, 4])[:2], run([1, 2]), rtol=0, atol=0)


# --- contract: names, errors, nfe, determinism, shapes and dtypes --------------------------------

def test_registries_and_unknown_names():
    assert sampling.get_predictor("reverse_diffusion") is sampling.ReverseDiffusionPredictor
    assert sampling.get_corrector("ald") is sampling.AnnealedLangevinDynamics
    with pytest.raises(ValueError, match="known predictors.*ancestral_sampling"):
        sampling.get_predictor("heun")
    with pytest.raises(ValueError, match="known correctors.*langevin"):
        sampling.get_corrector("mala")


def test_bad_parameters_raise(mixture):
    sde = VPSDE(N=10)
    score = mixture.score_fn(sde)
    with pytest.raises(ValueError, match="predictor"):
        sampling.pc_sample(sde, score, (4, 2), predictor="nope")
    with pytest.raises(ValueError, match="snr"):
        sampling.pc_sample(sde, score, (4, 2), snr=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        sampling.pc_sample(sde, score, (4, 2), n_steps=-1)
    with pytest.raises(ValueError, match="eps"):
        sampling.pc_sample(sde, score, (4, 2), eps=0.0)
    with pytest.raises(ValueError, match="ODE method"):
        sampling.ode_sample(sde, score, (4, 2), method="rk45")
    with pytest.raises(ValueError, match="eps"):
        sampling.ode_sample(sde, score, (4, 2), eps=1.5)


def test_subvp_ancestral_raises(mixture):
    sde = SubVPSDE(N=10)
    with pytest.raises(ValueError, match="ancestral sampling is defined for VPSDE.*SubVPSDE"):
        sampling.pc_sample(sde, mixture.score_fn(sde), (4, 2), predictor="ancestral_sampling")


def test_ancestral_probability_flow_raises(mixture):
    sde = VPSDE(N=10)
    with pytest.raises(ValueError, match="no probability-flow version"):
        sampling.pc_sample(sde, mixture.score_fn(sde), (4, 2), predictor="ancestral_sampling",
                           probability_flow=True)


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion",
                                       "ancestral_sampling", "none"])
@pytest.mark.parametrize("corrector", CORRECTORS)
def test_nfe_counts_score_calls(predictor, corrector, mixture):
    sde = VESDE(N=7)
    calls = []
    score = mixture.score_fn(sde)

    def counting_score(x, t):
        calls.append(1)
        return score(x, t)

    _, nfe = sampling.pc_sample(sde, counting_score, (3, 2), predictor=predictor,
                                corrector=corrector, n_steps=2)
    assert nfe == len(calls) == 7 * ((predictor != "none") + 2 * (corrector != "none"))


@pytest.mark.parametrize("sampler", ["pc", "ode"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_seeded_determinism(sampler, sde_name, mixture):
    sde = SDES[sde_name](N=25)
    fn = sampling.pc_sample if sampler == "pc" else sampling.ode_sample
    score = mixture_4d(mixture).score_fn(sde)
    a, _ = fn(sde, score, (5, 1, 2, 2), generator=torch.Generator().manual_seed(7))
    b, _ = fn(sde, score, (5, 1, 2, 2), generator=torch.Generator().manual_seed(7))
    c, _ = fn(sde, score, (5, 1, 2, 2), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def mixture_4d(mixture):
    """The test mixture's means tiled onto (1, 2, 2) images."""
    means = mixture.means.repeat(1, 2).reshape(-1, 1, 2, 2)
    return GaussianMixture(means, mixture.stds[:, 0], mixture.weights)


def test_per_sample_generator_makes_samples_batch_independent(mixture):
    """With a PerSampleGenerator and no batch-coupled step (Langevin's SNR rule averages norms
    over the batch, ALD does not), sample i does not depend on the rest of the batch."""
    sde = VPSDE(N=25)
    run = lambda seeds: sampling.pc_sample(sde, mixture.score_fn(sde), (len(seeds), 2),
                                           corrector="ald", generator=PerSampleGenerator(seeds))[0]
    torch.testing.assert_close(run([1, 2, 3, 4])[:2], run([1, 2]), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2), (3, 1, 2, 2)])
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion",
                                       "ancestral_sampling", "none"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_shapes_and_dtypes_preserved(dtype, shape, predictor, sde_name, mixture):
    """The float64 buffers of the SDEs never promote float32 samples; float64 stays float64.
    (N = 30 > beta_max: below it, VP's discrete betas beta_max / N exceed 1.)"""
    sde = SDES[sde_name](N=30)
    if sde_name == "subvp" and predictor == "ancestral_sampling":
        pytest.skip("not defined for sub-VP (tested above)")
    mix = mixture if len(shape) == 2 else mixture_4d(mixture)
    for corrector in CORRECTORS:
        x, _ = sampling.pc_sample(sde, mix.score_fn(sde), shape, predictor=predictor,
                                  corrector=corrector, dtype=dtype,
                                  generator=torch.Generator().manual_seed(0))
        assert x.shape == shape and x.dtype == dtype and torch.isfinite(x).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["dopri5", "euler"])
def test_ode_shapes_and_dtypes(dtype, method, mixture):
    sde = VESDE(N=10)
    mix = mixture_4d(mixture)
    x, _ = sampling.ode_sample(sde, mix.score_fn(sde), (3, 1, 2, 2), dtype=dtype, method=method,
                               denoise=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 2, 2) and x.dtype == dtype and torch.isfinite(x).all()


def test_callback_sees_every_step(mixture):
    sde = VESDE(N=6)
    seen = []
    sampling.pc_sample(sde, mixture.score_fn(sde), (2, 2), callback=lambda d: seen.append(d["t"]))
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64),
                               torch.linspace(1.0, 1e-3, 6, dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("predictor,corrector", [("reverse_diffusion", "langevin"),
                                                 ("euler_maruyama", "none")])
def test_pc_full_length_chain(sde_name, predictor, corrector, mixture, reference, check):
    """score_sde's settings, N = 1000 (the default SDEs), 4000 samples. Measured with 20 000
    samples for reverse diffusion + Langevin: weights within 0.006, spreads within 2.2 % (the
    Langevin corrector's own O(h) bias at snr 0.16 on the narrowest mode); Euler-Maruyama alone
    is within 1 % already at N = 200."""
    sde = SDES[sde_name]()
    x, nfe = sampling.pc_sample(sde, mixture.score_fn(sde), (4000, 2), predictor=predictor,
                                corrector=corrector, generator=torch.Generator().manual_seed(1))
    assert nfe == 1000 * (1 + (corrector != "none"))
    check(mixture, x, weight_bias=0.01, spread_bias=0.03, reference=reference, ed_max=6e-3)
