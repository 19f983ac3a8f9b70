"""Time grids: end points, monotonicity, and uniform spacing in the variable each one names."""

import math

import pytest
import torch

from sde import VESDE, VPSDE, SubVPSDE
from sde.sampling.grids import GRIDS, get_time_grid, sigma_of

SDES = [VPSDE(), SubVPSDE(), VESDE()]


def is_uniform(v: torch.Tensor) -> bool:
    d = v.diff()
    return torch.allclose(d, d.mean().expand_as(d), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("grid", [g for g in GRIDS if g != "trailing"])  # trailing: schedules
def test_grid_runs_from_T_down_to_eps(sde, grid):
    t = get_time_grid(sde, 12, grid, eps=1e-3)
    assert t.shape == (12,) and t.dtype == torch.float64
    assert t[0].item() == sde.T and t[-1].item() == 1e-3
    assert (t.diff() < 0).all()


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_grids_are_uniform_in_their_variable(sde):
    eps, rho = 1e-3, 7.0
    assert is_uniform(get_time_grid(sde, 9, "uniform", eps=eps))
    assert is_uniform(get_time_grid(sde, 9, "quadratic", eps=eps).sqrt())
    assert is_uniform(sde.log_snr(get_time_grid(sde, 9, "logsnr", eps=eps)))
    sigma = sigma_of(sde, get_time_grid(sde, 9, "edm", eps=eps, rho=rho))
    assert is_uniform(sigma ** (1 / rho))
    assert sigma[0].item() == pytest.approx(sigma_of(sde, torch.tensor([1.0])).item(), rel=1e-9)


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
