"""Inpainting and colorization: the contract of every method x SDE (shape, finiteness, known entries
kept bit for bit, seeded determinism, true NFE), replacement against an independent seeded
reference loop of score_sde's algorithm, the denoise fix, colorization's grey level, and the SMC
sampler converging to the oracle's exact posterior as the number of particles grows."""

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE, sampling
from sde.metrics.two_sample import energy_distance
from sde.oracle import GaussianMixture
from sde.sampling.controllable import couple, decouple, dps_sample, smc_linear_inverse
from sde.utils import PerSampleGenerator, append_dims

SHAPE = (3, 2, 4, 4)  # image-like: nothing may assume 2-D data
MIXTURE = GaussianMixture(torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(0)),
                          [0.3, 0.5])
Y = MIXTURE.sample(SHAPE[0], torch.Generator().manual_seed(1))
MASK = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)) < 0.5).float()
SDES = [VPSDE(N=30), SubVPSDE(N=30), VESDE(N=30)]
METHODS = {  # id -> (method, options, nfe for N steps)
    "replacement": ("replacement", {}, lambda n: 2 * n),
    "replacement-rd": ("replacement", {"corrector": "none"}, lambda n: n),
    "repaint": ("repaint", {"resample": 3}, lambda n: 2 * (3 * (n - 1) + 1)),
    "dps": ("dps", {}, lambda n: 2 * n),
    "dps-em": ("dps", {"predictor": "euler_maruyama", "corrector": "none", "zeta": 0.5},
               lambda n: n),
    "dps-ancestral": ("dps", {"predictor": "ancestral_sampling", "corrector": "ald"},
                      lambda n: 2 * n),
    "smc": ("smc", {"corrector": "none", "particles": 4}, lambda n: n),
    "smc-em": ("smc", {"predictor": "euler_maruyama", "corrector": "none"}, lambda n: n),
    "smc-ancestral": ("smc", {"predictor": "ancestral_sampling", "corrector": "none"},
                      lambda n: n),
}


def run(method, sde, seed=0, dtype=torch.float32, **extra):
    name, options, _ = METHODS[method]
    score = MIXTURE.score_fn(sde)
    return sampling.inpaint(sde, score, Y.to(dtype), MASK.to(dtype), method=name,
                            generator=torch.Generator().manual_seed(seed), **{**options, **extra})


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("method", METHODS)
def test_contract(method, sde):
    if "ancestral" in method and isinstance(sde, SubVPSDE):
        with pytest.raises(ValueError, match="ancestral"):
            run(method, sde)
        return
    x, nfe = run(method, sde)
    assert x.shape == SHAPE and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x[MASK.bool()], Y[MASK.bool()])  # known entries bit for bit
    assert nfe == METHODS[method][2](sde.N)
    again, _ = run(method, sde)
    assert torch.equal(x, again)
    other, _ = run(method, sde, seed=1)
    assert not torch.equal(x, other)


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion",
                                       "ancestral_sampling", "none"])
@pytest.mark.parametrize("corrector", ["langevin", "ald", "none"])
@pytest.mark.parametrize("method", ["repaint", "dps"])
def test_every_predictor_corrector_pair(method, predictor, corrector):
    sde = VPSDE(N=30)
    x, nfe = sampling.inpaint(sde, MIXTURE.score_fn(sde), Y, MASK, method=method,
                              predictor=predictor, corrector=corrector,
                              generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and torch.equal(x[MASK.bool()], Y[MASK.bool()])
    calls = {"repaint": 10 * (sde.N - 1) + 1, "dps": sde.N}[method]  # passes of the loop
    per_pass = (predictor != "none" or method == "dps") + (corrector != "none")
    assert nfe == calls * per_pass


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion",
                                       "ancestral_sampling", "none"])
@pytest.mark.parametrize("corrector", ["langevin", "ald", "none"])
def test_replacement_is_score_sde_algorithm(predictor, corrector, sde):
    """Every predictor x corrector pair, bit for bit against a reference loop written as
    score_sde's `get_pc_inpainter` (arithmetic masks), with the x_mean fix."""
    if predictor == "ancestral_sampling" and isinstance(sde, SubVPSDE):
        pytest.skip("sub-VP has no discrete chain")
    score = MIXTURE.score_fn(sde)
    got, got_mean = (sampling.inpaint(sde, score, Y, MASK, predictor=predictor,
                                      corrector=corrector, denoise=d, eps=1e-3,
                                      generator=torch.Generator().manual_seed(5))[0]
                     for d in (False, True))
    g = torch.Generator().manual_seed(5)
    pred = sampling.get_predictor(predictor)(sde, score)
    corr = sampling.get_corrector(corrector)(sde, score, 0.16, 1)

    def update(step, x, t):
        x, x_mean = step.update_fn(x, t, g)
        y_mean, std = sde.marginal_prob(Y, t)
        y_t = y_mean + torch.randn(Y.shape, generator=g) * append_dims(std, Y.ndim)
        return x * (1.0 - MASK) + y_t * MASK, x_mean * (1.0 - MASK) + y_mean * MASK

    x = Y * MASK + sde.prior_sampling(Y.shape, g) * (1.0 - MASK)
    for t in torch.linspace(sde.T, 1e-3, sde.N, dtype=torch.float64).tolist():
        vec_t = torch.full((Y.shape[0],), t)
        x, x_mean = update(corr, x, vec_t)
        x, x_mean = update(pred, x, vec_t)
    unknown = ~MASK.bool()
    assert torch.equal(got[unknown], x[unknown])
    assert torch.equal(got_mean[unknown], x_mean[unknown])


@pytest.mark.parametrize("method", ["replacement", "repaint", "dps", "smc"])
def test_float64(method):
    x, _ = run(method, VESDE(N=30), dtype=torch.float64)
    assert x.dtype == torch.float64 and torch.isfinite(x).all()
    assert torch.equal(x[MASK.bool()], Y.double()[MASK.bool()])


def test_denoise_denoises():
    """score_sde's x_mean keeps the noisy unknown part, so its denoise=True equals denoise=False
    there; ours returns the last predictor step's noise-free mean."""
    sde = VPSDE(N=30)
    noisy, _ = run("replacement", sde, denoise=False)
    clean, _ = run("replacement", sde, denoise=True)
    unknown = ~MASK.bool()
    assert not torch.equal(noisy[unknown], clean[unknown])
    assert torch.equal(noisy[~unknown], clean[~unknown])


def test_repaint_with_one_pass_is_replacement():
    sde = VESDE(N=30)
    assert torch.equal(run("repaint", sde, resample=1)[0], run("replacement", sde)[0])


@pytest.mark.parametrize("method", ["replacement", "repaint", "dps", "smc"])
def test_colorize_keeps_the_grey_level(method):
    sde = VPSDE(N=30)
    image = GaussianMixture.random(2, (3, 4, 5), seed=3)
    gray = torch.rand(2, 1, 4, 5, generator=torch.Generator().manual_seed(4)) * 2 - 1
    options = {"corrector": "none"} if method == "smc" else {}
    x, nfe = sampling.colorize(sde, image.score_fn(sde), gray, method=method,
                               generator=torch.Generator().manual_seed(0), **options)
    assert x.shape == (2, 3, 4, 5) and torch.isfinite(x).all() and nfe > 0
    # exact up to rounding the channels to float32 (the grey channel is kept bit for bit in the
    # latent; fl((r + g + b) / 3) cannot hit every float, so bit equality is out of reach):
    # within 2 ulp of the pixel's largest channel (measured <= 1.5 ulp)
    ulp = torch.finfo(torch.float32).eps * x.abs().amax(1, keepdim=True)
    assert ((x.mean(1, keepdim=True) - gray).abs() <= 2 * ulp).all()
    assert x.std(1).mean() > 0.05  # it did colour


def test_decoupled_colour_space_is_orthonormal():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    z = decouple(x)
    torch.testing.assert_close(couple(z), x)
    torch.testing.assert_close(z.pow(2).sum(1), x.pow(2).sum(1))
    torch.testing.assert_close(z[:, 0], x.sum(1) / 3**0.5)  # the grey channel


def test_dps_with_a_matrix_operator():
    sde = VPSDE(N=30)
    mix = GaussianMixture.random(3, (4,), seed=0)
    A = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    x_true = mix.sample(8, torch.Generator().manual_seed(1))
    y = x_true @ A.T
    x, nfe = dps_sample(sde, mix.score_fn(sde), y, A, (8, 4), corrector="none", zeta=0.3,
                        generator=torch.Generator().manual_seed(2))
    assert x.shape == (8, 4) and nfe == 30 and torch.isfinite(x).all()
    # DPS pulls the measurement towards y: much closer than unconditional samples (measured on
    # 200: residual 0.55 against 1.97; its normalised step leaves a residual ~ 2 zeta |A|)
    free = mix.sample(8, torch.Generator().manual_seed(3))
    assert (x @ A.T - y).norm() < 0.5 * (free @ A.T - y).norm()


def test_bad_input_raises_clearly():
    sde, score = VESDE(N=10), MIXTURE.score_fn(VESDE(N=10))
    with pytest.raises(ValueError, match="mask must have y's shape"):
        sampling.inpaint(sde, score, Y, MASK[:, :1])
    with pytest.raises(ValueError, match="only 0"):
        sampling.inpaint(sde, score, Y, MASK * 0.5)
    with pytest.raises(ValueError, match="unknown inpainting method"):
        sampling.inpaint(sde, score, Y, MASK, method="magic")
    with pytest.raises(ValueError, match="takes no option particles"):
        sampling.inpaint(sde, score, Y, MASK, particles=4)
    with pytest.raises(ValueError, match="corrector='none'"):
        sampling.inpaint(sde, score, Y, MASK, method="smc")
    with pytest.raises(ValueError, match="torch.Generator"):
        sampling.inpaint(sde, score, Y, MASK, method="smc", corrector="none",
                         generator=PerSampleGenerator(range(SHAPE[0])))
    with pytest.raises(ValueError, match="stochastic predictor"):
        sampling.inpaint(sde, score, Y, MASK, method="smc", corrector="none", predictor="none")
    with pytest.raises(ValueError, match="gray must be"):
        sampling.colorize(sde, score, Y)
    with pytest.raises(ValueError, match="eps"):
        sampling.inpaint(sde, score, Y, MASK, eps=0.0)



@pytest.mark.parametrize("method", METHODS)
def test_a_vp_chain_with_too_few_steps_is_refused_before_sampling(method):
    """N <= beta_max makes VP's DDPM betas >= 1 (NaN downstream): one clear error up front, as
    pc_sample gives, rather than a NaN error after the work."""
    name, options, _ = METHODS[method]
    sde = VPSDE(N=5)
    go = lambda: sampling.inpaint(sde, MIXTURE.score_fn(sde), Y, MASK, method=name,  # noqa: E731
                                  generator=torch.Generator().manual_seed(0), **options)
    if options.get("predictor") == "euler_maruyama":  # continuous-time steps: valid at any N
        assert torch.isfinite(go()[0]).all()
        return
    with pytest.raises(ValueError, match=r"N \(sampler.steps\) > beta_max"):
        go()

# --- SMC converges to the exact posterior -------------------------------------------------
POSTERIOR_MIX = GaussianMixture([[-1.5, -1.0], [1.5, 0.0], [0.0, 1.5]],
                                [[0.4, 0.6], [0.5, 0.5], [0.3, 0.7]], [0.4, 0.35, 0.25])


def ed_over_floor(mix, sde, mask, y, method, n, **options):
    """Energy distance of n inpaintings of one observation to n exact posterior draws, divided by
    the mean |ED| of pairs of exact sets of n (the sampling floor)."""
    post = mix.condition(mask, y)
    g = torch.Generator().manual_seed(0)
    floor = sum(abs(energy_distance(post.sample(n, g), post.sample(n, g))) for _ in range(8)) / 8
    x, _ = sampling.inpaint(sde, mix.score_fn(sde), y.expand(n, -1).clone(),
                            mask.expand(n, -1).clone(), method=method,
                            generator=torch.Generator().manual_seed(1), **options)
    return energy_distance(x, post.sample(n, g)) / floor


def test_smc_converges_to_the_posterior_as_particles_grow():
    """On a 2-D mixture observed in one coordinate, under VP at N = 100, ED / floor falls like
    1 / K (measured: K = 1: 439, 4: 68, 8: 23, 16: 8.4, 32: 7.8, 64: 1.0; replacement 250-360)."""
    sde, mask, y = VPSDE(N=100), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5])
    ratios = [ed_over_floor(POSTERIOR_MIX, sde, mask, y, "smc", 1000, corrector="none",
                            particles=k) for k in (1, 4, 16)]
    assert ratios[0] > 100 and ratios[0] > 3 * ratios[1] and ratios[1] > 3 * ratios[2], ratios


@pytest.mark.slow
def test_smc_reaches_the_floor():
    """The same problem at K = 64: an exact sampler scores |ED / floor| ~ 1, rarely above 3."""
    sde, mask, y = VPSDE(N=100), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5])
    ratio = ed_over_floor(POSTERIOR_MIX, sde, mask, y, "smc", 1000, corrector="none",
                          particles=64)
    assert abs(ratio) < 4, ratio


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VESDE(sigma_max=10.0, N=200), SubVPSDE(N=200)],
                         ids=["VESDE", "SubVPSDE"])
def test_smc_is_exact_where_replacement_is_biased(sde):
    """4-D mixture with two observed coordinates: SMC with 64 particles is at the floor (an exact
    sampler scores |ED / floor| ~ 1, rarely above 3), replacement far above it (measured: 290x
    for sub-VP; the issue's known 30-200x). Measured for SMC: VE -0.03, sub-VP 4.4 (sub-VP's
    Euler-Maruyama chain at N = 200 keeps a little discretisation bias; 1.0 at N = 1000)."""
    mix = GaussianMixture.random(6, (4,), spread=1.5, std=(0.1, 0.4), seed=3)  # as the benchmark
    mask, y = torch.tensor([1.0, 0.0, 1.0, 0.0]), mix.sample(1, torch.Generator().manual_seed(0))[0]
    smc = ed_over_floor(mix, sde, mask, y, "smc", 1000, corrector="none", particles=64)
    replacement = ed_over_floor(mix, sde, mask, y, "replacement", 1000)
    assert smc < 6 and replacement > 30, (smc, replacement)


# --- SMC for a general noisy linear measurement -------------------------------------------
LINEAR_MIX = GaussianMixture([[-1.5, -1.0, 0.5], [1.5, 0.0, -0.5], [0.0, 1.5, 1.0]],
                             [[0.4, 0.6, 0.5], [0.5, 0.5, 0.3], [0.3, 0.7, 0.4]],
                             [0.4, 0.35, 0.25])
A_SUM = torch.tensor([[1.0, 1.0, 0.0]])  # y = x_0 + x_1 + N(0, 0.2^2)


def linear_ratio(sde, particles, n=1000):
    post = LINEAR_MIX.posterior(A_SUM, [0.3], 0.2)
    g = torch.Generator().manual_seed(0)
    floor = sum(abs(energy_distance(post.sample(n, g), post.sample(n, g))) for _ in range(8)) / 8
    x, nfe = smc_linear_inverse(sde, LINEAR_MIX.score_fn(sde), torch.full((n, 1), 0.3), A_SUM,
                                (n, 3), noise_std=0.2, particles=particles,
                                generator=torch.Generator().manual_seed(1))
    assert nfe == sde.N and x.shape == (n, 3)
    return energy_distance(x, post.sample(n, g)) / floor


def test_linear_smc_converges_to_the_oracle_posterior():
    """ED / floor to GaussianMixture.posterior (measured, VP N = 100: K = 1: 20, 4: 4.9,
    16: 1.4, 64: -0.8; DPS with zeta = 0.3: 103)."""
    one, sixteen = linear_ratio(VPSDE(N=100), 1), linear_ratio(VPSDE(N=100), 16)
    assert one > 10 and sixteen < 4 and one > 4 * sixteen, (one, sixteen)


@pytest.mark.slow
def test_linear_smc_reaches_the_floor_under_ve():
    """VE, K = 64 (measured -0.02; K = 1: 30)."""
    assert abs(linear_ratio(VESDE(N=100), 64)) < 4


def test_linear_smc_noiseless_and_images():
    sde = VESDE(N=20)
    A = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    x_true = MIXTURE.sample(SHAPE[0], torch.Generator().manual_seed(1))
    y = x_true.flatten(1) @ A.T
    x, nfe = smc_linear_inverse(sde, MIXTURE.score_fn(sde), y, A, SHAPE, particles=4,
                                generator=torch.Generator().manual_seed(2))
    assert x.shape == SHAPE and torch.isfinite(x).all() and nfe == 20
    again, _ = smc_linear_inverse(sde, MIXTURE.score_fn(sde), y, A, SHAPE, particles=4,
                                  generator=torch.Generator().manual_seed(2))
    assert torch.equal(x, again)
    # noiseless: the returned mean of the last guided move satisfies A x = y closely
    assert (x.flatten(1) @ A.T - y).abs().max() < 0.05 * y.abs().max()
