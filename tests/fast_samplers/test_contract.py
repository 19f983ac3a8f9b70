"""One contract for every sampler of the registry: shape, dtype, finiteness, true NFE, seeded
determinism; bad names and options raise ValueError."""

from contextlib import nullcontext

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE, sampling
from sde.likelihood import log_likelihood
from sde.oracle import GaussianMixture
from sde.sampling.registry import SAMPLERS, get_sampler
from sde.utils import NonFiniteError, PerSampleGenerator, append_dims

SHAPE = (3, 2, 4, 4)  # image-like: nothing may assume 2-D data
MIXTURE = GaussianMixture(torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(0)),
                          [0.3, 0.5])
SDES = [VPSDE(), SubVPSDE(), VESDE()]
CASES = {  # id -> (name, options, expected nfe or None)
    "pc": ("pc", {"steps": 30, "corrector": "none"}, 30),
    "pc-langevin": ("pc", {"steps": 25}, 50),
    "ode": ("ode", {"rtol": 1e-3, "atol": 1e-3}, None),
    "ddim": ("ddim", {"steps": 5}, 5),
    "ddim-eta1": ("ddim", {"steps": 5, "eta": 1.0}, 5),
    "heun": ("heun", {"steps": 4}, 7),
    "heun-churn": ("heun", {"steps": 4, "S_churn": 20.0, "S_tmin": 0.05, "S_tmax": 50.0}, 7),
    "dpm_solver-2": ("dpm_solver", {"steps": 4}, 7),
    "dpm_solver-3": ("dpm_solver", {"steps": 4, "order": 3, "grid": "edm"}, 10),
    "dpm_solver_pp-2M": ("dpm_solver_pp", {"steps": 5, "grid": "quadratic"}, 5),
    "dpm_solver_pp-3M": ("dpm_solver_pp", {"steps": 5, "order": 3}, 5),
    "adaptive": ("adaptive", {"rtol": 0.2, "atol": 0.05}, None),
    "unipc-bh1-1": ("unipc", {"steps": 5, "order": 1, "variant": "bh1"}, 5),
    "unipc-bh2-2": ("unipc", {"steps": 6, "grid": "edm"}, 6),
    "unipc-bh1-3": ("unipc", {"steps": 6, "order": 3, "variant": "bh1"}, 6),
    "deis-3": ("deis", {"steps": 5}, 5),
    "deis-4": ("deis", {"steps": 7, "order": 4, "grid": "edm"}, 7),
    "ipndm-4": ("deis", {"steps": 7, "order": 4, "variant": "ipndm"}, 7),
    # denoise_to_zero=False: steps + 1 grid times, the last step lands on eps (output x_eps)
    "dpm_solver_pp-3M-x_eps": ("dpm_solver_pp", {"steps": 5, "order": 3, "denoise_to_zero": False},
                               5),
    "unipc-bh2-2-x_eps": ("unipc", {"steps": 6, "denoise_to_zero": False}, 6),
    "ipndm-4-x_eps": ("deis", {"steps": 7, "order": 4, "variant": "ipndm",
                               "denoise_to_zero": False}, 7),
}
STOCHASTIC = {"pc", "pc-langevin", "ddim-eta1", "heun-churn", "adaptive"}


class Counter:
    def __init__(self, score_fn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x, t):
        self.calls += 1
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        return self.score_fn(x, t)


def draw(case, sde, seed=0, dtype=torch.float32, generator=None, batch=SHAPE[0]):
    name, options, _ = CASES[case]
    return draw_with(name, options, sde, seed, dtype, generator, batch)


def draw_with(name, options, sde, seed=0, dtype=torch.float32, generator=None, batch=SHAPE[0]):
    counter = Counter(MIXTURE.score_fn(sde))
    generator = generator or torch.Generator().manual_seed(seed)
    x, nfe = get_sampler(name)(sde, counter, (batch, *SHAPE[1:]), generator=generator,
                               dtype=dtype, **options)
    return x, nfe, counter.calls


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_contract(case, sde, dtype):
    x, nfe, calls = draw(case, sde, dtype=dtype)
    assert x.shape == SHAPE and x.dtype == dtype
    assert torch.isfinite(x).all()
    assert nfe == calls
    expected = CASES[case][2]
    assert expected is None or nfe == expected


@pytest.mark.parametrize("case", CASES)
def test_seeded_determinism(case):
    sde = VESDE()
    a, b, c = draw(case, sde, seed=1)[0], draw(case, sde, seed=1)[0], draw(case, sde, seed=2)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"pc", "pc-langevin", "ode"}))
def test_sample_does_not_depend_on_batch(case):
    """With one generator per example (EDM's StackedRandomGenerator), example i is the same in a
    batch of 3 and of 2 (the adaptive solver keeps one step size per example)."""
    sde = VPSDE()
    big = draw(case, sde, generator=PerSampleGenerator([5, 6, 7]), batch=3)[0]
    small = draw(case, sde, generator=PerSampleGenerator([5, 6]), batch=2)[0]
    assert torch.allclose(big[:2], small, atol=1e-5)


def test_churn_changes_heun_but_not_its_nfe():
    sde = VPSDE()
    plain, churned = draw("heun", sde), draw("heun-churn", sde)
    assert plain[1] == churned[1] == 7
    assert not torch.allclose(plain[0], churned[0])


@pytest.mark.parametrize("case", sorted(set(CASES) - {"pc", "pc-langevin", "ode"}))
def test_final_step_leaves_no_noise(case):
    """Data at a point: every sample must land on it, not within sigma(eps) = 0.01 of it; with
    denoise_to_zero=False on x_eps = alpha(eps) mu + std(eps) z instead."""
    sde, mu = VPSDE(), 0.3
    point = GaussianMixture(torch.full((1, 4), mu), 1e-4)
    name, options, _ = CASES[case]
    x, _ = get_sampler(name)(sde, point.score_fn(sde), (256, 4), dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0), **options)
    if options.get("denoise_to_zero", True):
        assert (x - mu).abs().max() < 1e-3
    else:
        alpha, std = sde.marginal_coeffs(torch.tensor([1e-3], dtype=torch.float64))
        z = (x - alpha * mu) / std
        assert z.mean().abs() < 0.15 and z.std().item() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("denoise_to_zero", [True, False])
@pytest.mark.parametrize("name", ["dpm_solver_pp", "unipc", "deis"])
def test_one_step_is_one_score_call(name, denoise_to_zero):
    _, nfe, calls = draw_with(name, {"steps": 1, "denoise_to_zero": denoise_to_zero}, VPSDE())
    assert nfe == calls == 1


def test_registry_knows_every_sampler():
    assert set(SAMPLERS) == {"pc", "ode", "ddim", "heun", "dpm_solver", "dpm_solver_pp",
                             "adaptive", "unipc", "deis", "distilled"}
    for name in SAMPLERS:
        assert callable(get_sampler(name))


def test_unknown_sampler_lists_the_known_ones():
    with pytest.raises(ValueError, match="known samplers: pc, ode, ddim"):
        get_sampler("euler")


@pytest.mark.parametrize("name, options, match", [
    ("ddim", {"steps": 4, "eta": 1.5}, "eta"),
    ("ddim", {"steps": 0}, "steps"),
    ("ddim", {"steps": 4, "eps": 0.0}, "eps"),
    ("ddim", {"steps": 4, "grid": "cosine"}, "known grids"),
    ("heun", {"steps": 4, "S_churn": -1.0}, "S_churn"),
    ("heun", {"steps": 4, "S_tmin": 2.0, "S_tmax": 1.0}, "S_tmax"),
    ("dpm_solver", {"steps": 4, "order": 1}, "order"),
    ("dpm_solver_pp", {"steps": 4, "order": 4}, "order"),
    ("adaptive", {"grid": "edm"}, "grid=None"),
    ("unipc", {"steps": 4, "order": 4}, "order"),
    ("unipc", {"steps": 4, "variant": "bh3"}, "variant"),
    ("deis", {"steps": 4, "order": 5}, "order"),
    ("deis", {"steps": 4, "variant": "tab"}, "variant"),
    ("deis", {"steps": 4, "grid": "optimized"}, "needs times"),
    ("unipc", {"steps": 4, "denoise_to_zero": "no"}, "denoise_to_zero must be true or false"),
    ("deis", {"steps": 2, "grid": "optimized", "times": [1.0, 1e-3], "denoise_to_zero": False},
     "needs 3"),
    ("unipc", {"steps": 4, "grid": "optimized", "times": [1.0, 0.5, 1e-3]}, "needs 4"),
    ("ddim", {"steps": 3, "grid": "optimized", "times": [1.0, 1e-3, 0.5]}, "decrease"),
    ("ddim", {"steps": 3, "grid": "edm", "times": [1.0, 0.5, 1e-3]}, "optimized"),
    ("adaptive", {"rtol": 0.0}, "rtol"),
    ("adaptive", {"steps": 0}, "steps"),
    ("pc", {"steps": 10, "grid": "edm"}, "uniform"),
    ("pc", {"steps": 0}, "steps"),
    ("ode", {"steps": 10}, "fixed-grid"),
    ("ode", {"grid": "edm"}, "grid=None"),
])
def test_bad_options_raise(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_sampler(name)(VPSDE(), MIXTURE.score_fn(VPSDE()), SHAPE, **options)


def test_adaptive_gives_up_after_max_iters():
    with pytest.raises(RuntimeError, match="max_iters"):
        get_sampler("adaptive")(VPSDE(), MIXTURE.score_fn(VPSDE()), SHAPE, rtol=1e-6, atol=1e-6,
                                max_iters=3)


def test_pc_steps_set_the_discretisation():
    """`steps` rebuilds the SDE with N = steps: the DDPM chain of N = 1000 at steps=1000."""
    from sde.sampling.registry import with_steps

    sde = with_steps(VPSDE(beta_min=0.2, N=10), 1000)
    assert sde.N == 1000 and sde.beta_min == 0.2
    assert torch.allclose(sde.discrete_betas, VPSDE(beta_min=0.2).discrete_betas)


def test_ode_fixed_grid_method_takes_steps():
    x, nfe = get_sampler("ode")(VESDE(), MIXTURE.score_fn(VESDE()), SHAPE, steps=6,
                                method="rk4", generator=torch.Generator().manual_seed(0))
    assert nfe == 24 and torch.isfinite(x).all()


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(set(CASES) - {"pc", "pc-langevin", "ode"}))
def test_runs_on_cuda_with_a_cuda_generator(case):
    sde, device = VPSDE(), torch.device("cuda")
    name, options, _ = CASES[case]
    x, _ = get_sampler(name)(sde, MIXTURE.score_fn(sde), SHAPE, device=device,
                             generator=torch.Generator(device).manual_seed(0), **options)
    assert x.device.type == "cuda" and x.shape == SHAPE and torch.isfinite(x).all()


# --- NaN from the score function: one clear error from every sampler and the likelihood -------

def nan_in_the_middle(score_fn):
    """A score that is NaN for 0.1 < t < 0.9 only (as a network that overflows at some noise
    levels): the last calls are finite, so the check must remember the earlier ones."""
    return lambda x, t: torch.where(append_dims((0.1 < t) & (t < 0.9), x.ndim),
                                    torch.full_like(x, float("nan")), score_fn(x, t))


@pytest.mark.parametrize("case", CASES)
def test_nan_score_raises_a_clear_error(case):
    sde = VPSDE()
    name, options, _ = CASES[case]
    with pytest.raises(NonFiniteError, match="score_fn returned NaN or Inf"):
        get_sampler(name)(sde, nan_in_the_middle(MIXTURE.score_fn(sde)), SHAPE,
                          generator=torch.Generator().manual_seed(0), **options)


@pytest.mark.parametrize("fn", ["pc_sample", "ode_sample", "ode_sample-rk4", "log_likelihood"])
def test_nan_score_raises_in_pc_ode_and_likelihood(fn):
    sde = VPSDE(N=50)
    score_fn = nan_in_the_middle(MIXTURE.score_fn(sde))
    with pytest.raises(NonFiniteError, match="score_fn returned NaN or Inf"):
        if fn == "log_likelihood":
            log_likelihood(sde, score_fn, torch.zeros(SHAPE), hutchinson="rademacher")
        elif fn == "pc_sample":
            sampling.pc_sample(sde, score_fn, SHAPE)
        else:
            sampling.ode_sample(sde, score_fn, SHAPE, method="rk4" if "rk4" in fn else "dopri5")


@pytest.mark.parametrize("name, options, key", [
    ("ode", {"rtol": -1}, "rtol"), ("ode", {"atol": 0.0}, "atol"), ("ode", {"rtol": "abc"}, "rtol"),
    ("adaptive", {"atol": -1.0}, "atol"),
])
def test_bad_tolerances_name_the_key(name, options, key):
    with pytest.raises(ValueError, match=f"{key} must be a number > 0"):
        get_sampler(name)(VPSDE(), MIXTURE.score_fn(VPSDE()), SHAPE, **options)
    with pytest.raises(ValueError, match="rtol must be a number > 0"):
        log_likelihood(VPSDE(), MIXTURE.score_fn(VPSDE()), torch.zeros(SHAPE), rtol=-1)


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("predictor, corrector", [("reverse_diffusion", "none"),
                                                  ("euler_maruyama", "langevin"),
                                                  ("ancestral_sampling", "none")])
def test_pc_with_steps_up_to_beta_max_names_the_cause(steps, predictor, corrector):
    """VP's DDPM chain on N <= beta_max = 20 steps has betas beta_max / N >= 1 (NaN or a step that
    zeroes x): refused before sampling, naming beta_max and the fix. N = 21 runs."""
    sde = VPSDE()
    run = lambda n: get_sampler("pc")(sde, MIXTURE.score_fn(sde), SHAPE, steps=n,
                                      predictor=predictor, corrector=corrector)
    with pytest.warns(UserWarning) if predictor == "ancestral_sampling" else nullcontext():
        with pytest.raises(ValueError, match=r"beta_max / N must stay below 1.*steps"):
            run(steps)
    assert torch.isfinite(run(21)[0]).all()


def test_an_option_the_sampler_does_not_take_is_named_before_any_work():
    """An experiment's `sampler.corrector: none` stays when the command line switches to
    sampler=heun: refused with the key named, not a TypeError after training."""
    from sde.sampling.registry import check_sampler_options

    with pytest.raises(ValueError, match=r"sampler=heun takes no option corrector .*~sampler"):
        check_sampler_options("heun", {"steps": 4, "corrector": "none"})
    with pytest.raises(ValueError, match="sampler=pc takes no option eta"):
        check_sampler_options("pc", {"eta": 0.0})
    check_sampler_options("pc", {"steps": 4, "corrector": "none", "corrector_options": {}})
    check_sampler_options("ddim", {"steps": 4, "eta": 1.0, "grid": "logsnr"})


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_has_a_config_that_takes_its_own_options(name):
    from omegaconf import OmegaConf

    from sde.runs.paths import CONFIG_DIR
    from sde.runs.sampling import split_sampler

    file = CONFIG_DIR / "sampler" / f"{name}.yaml"
    assert file.is_file(), f"sampler={name} on the command line needs {file}"
    split_sampler(OmegaConf.to_container(OmegaConf.load(file)))


def _nan_cases(sde, score_fn):
    """The samplers outside CASES: the distilled one of the registry and the controllable ones."""
    from sde.sampling import controllable

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    y, mask = torch.zeros(SHAPE), torch.rand(SHAPE, generator=g()) < 0.5
    inpaint = lambda method, **kw: lambda: controllable.inpaint(  # noqa: E731
        sde, score_fn, y, mask, method=method, generator=g(), **kw)
    return {
        "distilled": lambda: get_sampler("distilled")(sde, score_fn, SHAPE, steps=4, generator=g()),
        "inpaint-replacement": inpaint("replacement"),
        "inpaint-repaint": inpaint("repaint", resample=2),
        "inpaint-dps": inpaint("dps"),
        "inpaint-smc": inpaint("smc", corrector="none", particles=2),
        "colorize": lambda: controllable.colorize(sde, lambda x, t: score_fn(x[:, :2], t).repeat(
            1, 2, 1, 1)[:, :3], torch.zeros(SHAPE[0], 1, 4, 4), generator=g()),
        "dps_sample": lambda: controllable.dps_sample(sde, score_fn, torch.zeros(SHAPE[0], 4),
                                                      torch.randn(4, 32, generator=g()), SHAPE,
                                                      generator=g()),
        "smc_linear_inverse": lambda: controllable.smc_linear_inverse(
            sde, score_fn, torch.zeros(SHAPE[0], 4), torch.randn(4, 32, generator=g()), SHAPE,
            noise_std=0.1, particles=2, generator=g()),
    }


@pytest.mark.parametrize("case", list(_nan_cases(None, None)))
def test_nan_score_raises_in_the_distilled_and_controllable_samplers(case):
    """Every other sampler that takes a score_fn: NaN from the score is the named cause, not NaN
    samples (nor a distribution's constraint error) returned to the caller."""
    sde = VPSDE(N=25)
    score_fn = nan_in_the_middle(MIXTURE.score_fn(sde))
    with pytest.raises(NonFiniteError, match="score_fn returned NaN or Inf during"):
        _nan_cases(sde, score_fn)[case]()
