"""Time grids: end points, monotonicity, and uniform spacing in the variable each one names."""

import math

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE
from sde.sampling.grids import FORMULA_GRIDS, get_time_grid

SDES = [VPSDE(), SubVPSDE(), VESDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("grid", FORMULA_GRIDS)
def test_grid_runs_from_T_down_to_eps(sde, grid):
    t = get_time_grid(sde, 12, grid, eps=1e-3)
    assert t.shape == (12,) and t.dtype == torch.float64
    assert t[0].item() == sde.T and t[-1].item() == 1e-3
    assert (t.diff() < 0).all()


def log_alpha_std(sde, t: float) -> tuple[float, float]:
    """(log alpha(t), std(t)) written out from Song et al. (2021, Eq. 29, 33 and 31), with math in
    float64, independently of the SDE classes."""
    if isinstance(sde, VESDE):
        return 0.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    log_alpha = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
    one_minus_a2 = -math.expm1(2 * log_alpha)
    return log_alpha, (one_minus_a2 if isinstance(sde, SubVPSDE) else math.sqrt(one_minus_a2))


def sigma_closed(sde, t: float) -> float:
    """sigma(t) = std(t) / alpha(t)."""
    log_alpha, std = log_alpha_std(sde, t)
    return std / math.exp(log_alpha)


def line(a: float, b: float, steps: int) -> torch.Tensor:
    """steps points a + i (b - a) / (steps - 1), float64."""
    return torch.tensor([a + i * (b - a) / (steps - 1) for i in range(steps)], dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("steps", [2, 3, 9])
def test_grids_are_uniform_in_their_variable(sde, steps):
    """Every point, interior ones included, against the grid's defining formula written with the
    closed forms above: the end points are overwritten by the code, the interior points are not,
    so a wrong end point of the formula (or float32 arithmetic: 1.7e-8 relative on the "edm"
    sigmas) shows up there. Tolerance 1e-12 relative."""
    eps, rho, T = 1e-3, 7.0, sde.T
    t = {g: get_time_grid(sde, steps, g, eps=eps, rho=rho) for g in FORMULA_GRIDS}
    torch.testing.assert_close(t["uniform"], line(T, eps, steps), rtol=1e-12, atol=0)
    torch.testing.assert_close(t["quadratic"].sqrt(), line(T**0.5, eps**0.5, steps), rtol=1e-12,
                               atol=0)
    lam = lambda s: 2 * (log_alpha_std(sde, s)[0] - math.log(log_alpha_std(sde, s)[1]))
    torch.testing.assert_close(torch.tensor([lam(s) for s in t["logsnr"].tolist()], dtype=torch.float64),
                               line(lam(T), lam(eps), steps), rtol=1e-12, atol=1e-12)
    # Karras et al. (2022), Eq. 5: sigma_i = (s_max^(1/rho) + i / (n - 1) (s_min^(1/rho) -
    # s_max^(1/rho)))^rho with s_max = sigma(T), s_min = sigma(eps)
    s_max, s_min = sigma_closed(sde, T), sigma_closed(sde, eps)
    karras = line(s_max ** (1 / rho), s_min ** (1 / rho), steps) ** rho
    torch.testing.assert_close(torch.tensor([sigma_closed(sde, s) for s in t["edm"].tolist()],
                                            dtype=torch.float64),
                               karras, rtol=1e-12, atol=0)


def test_edm_grid_is_karras_eq5_for_ve():
    """On VE, sigma(t) is the kernel std: the grid is EDM's Eq. 5 from sigma(T) to sigma(eps)."""
    sde, steps, rho = VESDE(), 6, 7.0
    s_max, s_min = sde.sigma_max, sde.sigma(torch.tensor(1e-3, dtype=torch.float64)).item()
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    expected = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    grid = get_time_grid(sde, steps, "edm", rho=rho)
    assert torch.allclose(sde.sigma(grid), expected, rtol=1e-10)


def test_logsnr_is_uniform_time_on_ve():
    sde = VESDE()
    assert torch.allclose(get_time_grid(sde, 7, "logsnr"), get_time_grid(sde, 7, "uniform"))


def test_single_step_grid_is_T():
    assert get_time_grid(VPSDE(), 1, "edm").tolist() == [1.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"eps": 0.0}, "eps"),
    ({"eps": 1.0}, "eps"), ({"grid": "cosine"}, "known grids"), ({"rho": 0.0}, "rho"),
])
def test_bad_grid_arguments_raise(kwargs, match):
    args = {"steps": 5, "grid": "edm", "eps": 1e-3, "rho": 7.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        get_time_grid(VPSDE(), args.pop("steps"), args.pop("grid"), **args)


def test_quadratic_grid_formula():
    t = get_time_grid(VPSDE(), 3, "quadratic", eps=0.04)
    assert t.tolist() == pytest.approx([1.0, ((1 + math.sqrt(0.04)) / 2) ** 2, 0.04])
