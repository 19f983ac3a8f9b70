"""get_score_fn: every (SDE, time input, prediction) gives the exact score of a Gaussian."""

import math

import pytest
import torch
from torch import nn

from sde import VESDE, VPSDE, SubVPSDE
from sde.models import MLP, get_denoiser_fn, get_score_fn
from sde.utils import append_dims

M0, S0 = 0.7, 0.5  # data x_0 ~ N(M0, S0^2 I)


def gaussian_score(x, alpha, std):
    """grad log N(x; alpha M0, (alpha^2 S0^2 + std^2) I)."""
    a, s = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
    return -(x - a * M0) / (a**2 * S0**2 + s**2)


def kernel_at(sde, cond, time_input):
    """(alpha, std) that a network receiving `cond` must assume, computed independently."""
    if time_input == "t":
        return sde.marginal_coeffs(cond / 999.0)
    if time_input == "sigma":  # VE: alpha = 1, std = cond
        return torch.ones_like(cond), cond
    if time_input == "step":  # DDPM chain: alpha_bar of step floor(cond)
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
        abar = abar[cond.long()]
        return abar.sqrt(), (1 - abar).sqrt()
    # smld_step: index into sigmas sorted from sigma_max down to sigma_min
    sigmas = torch.exp(torch.linspace(math.log(50.0), math.log(0.01), 1000, dtype=torch.float64))
    return torch.ones_like(cond), sigmas[cond.long()]


class GaussianOracle(nn.Module):
    """A 'network' predicting exactly eps, the score, std * score, or x0 for Gaussian data."""

    def __init__(self, sde, time_input, prediction):
        super().__init__()
        self.sde, self.time_input, self.prediction = sde, time_input, prediction

    def forward(self, x, cond):
        alpha, std = kernel_at(self.sde, cond, self.time_input)
        score = gaussian_score(x, alpha, std)
        s, a = append_dims(std, x.ndim), append_dims(alpha, x.ndim)
        return {"eps": -s * score, "score": score, "scaled_score": s * score,
                "x0": (x + s**2 * score) / a}[self.prediction]


CASES = [(VPSDE(), "t"), (SubVPSDE(), "t"), (VESDE(), "sigma"), (VPSDE(), "step"),
         (VESDE(), "smld_step")]


@pytest.mark.parametrize("prediction", ["eps", "score", "scaled_score", "x0"])
@pytest.mark.parametrize("sde,time_input", CASES,
                         ids=[f"{type(s).__name__}-{ti}" for s, ti in CASES])
@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 3, 3)])
def test_exact_gaussian_prediction_gives_the_exact_score(sde, time_input, prediction, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    t = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.01, 1e-3], dtype=torch.float64)
    score_fn = get_score_fn(sde, GaussianOracle(sde, time_input, prediction),
                            prediction=prediction, time_input=time_input)
    if time_input in ("t", "sigma"):
        alpha, std = sde.marginal_coeffs(t)
    else:
        alpha, std = kernel_at(sde, _labels(t, time_input), time_input)
    # x0 -> score divides by std^2 (1e-8 for sub-VP at t = 1e-3): cancellation costs digits
    rtol = 1e-7 if prediction == "x0" else 1e-10
    torch.testing.assert_close(score_fn(x, t), gaussian_score(x, alpha, std), rtol=rtol, atol=0)


def _labels(t, time_input):
    """score_sde's discrete labels: t (N - 1) for DDPM, round((1 - t)(N - 1)) for SMLD."""
    return t * 999 if time_input == "step" else torch.round((1 - t) * 999)


def test_time_inputs_are_what_score_sde_feeds():
    seen = {}

    def record(x, cond):
        seen["cond"] = cond
        return torch.zeros_like(x)

    t = torch.tensor([1.0, 0.5, 0.0015])
    x = torch.zeros(3, 2)
    get_score_fn(VPSDE(), record, time_input="t")(x, t)
    torch.testing.assert_close(seen["cond"], 999 * t)
    get_score_fn(VESDE(), record, time_input="sigma", prediction="score")(x, t)
    torch.testing.assert_close(seen["cond"], 0.01 * 5000**t)
    get_score_fn(VPSDE(), record, time_input="step")(x, t)
    torch.testing.assert_close(seen["cond"], t * 999)  # float, as score_sde (not rounded)
    get_score_fn(VESDE(), record, time_input="smld_step", prediction="score")(x, t)
    torch.testing.assert_close(seen["cond"], torch.tensor([0.0, 500.0, 998.0]))


def test_train_and_eval_mode_are_left_alone():
    model = MLP(dim=2, hidden=16)
    score_fn = get_score_fn(VPSDE(), model)
    x, t = torch.randn(4, 2), torch.rand(4)
    model.train()
    score_fn(x, t)
    assert model.training
    model.eval()
    score_fn(x, t)
    assert not model.training


def test_model_kwargs_reach_the_network():
    model = MLP(dim=2, hidden=16, num_classes=3).eval()
    x, t = torch.randn(4, 2), torch.rand(4)
    labels = torch.tensor([0, 1, 2, 0])
    a = get_score_fn(VPSDE(), model, model_kwargs={"class_labels": labels})(x, t)
    std = VPSDE().marginal_coeffs(t)[1]
    torch.testing.assert_close(a, -model(x, 999 * t, class_labels=labels) / std[:, None])


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_denoiser_is_tweedie(sde):
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01], dtype=torch.float64)
    alpha, std = sde.marginal_coeffs(t)
    score_fn = lambda x, t: gaussian_score(x, *sde.marginal_coeffs(t))
    v = append_dims(alpha**2 * S0**2 + std**2, 2)
    expected = M0 + append_dims(alpha, 2) * S0**2 / v * (x - append_dims(alpha, 2) * M0)
    torch.testing.assert_close(get_denoiser_fn(sde, score_fn)(x, t), expected)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="prediction"):
        get_score_fn(VPSDE(), MLP(), prediction="w")
    with pytest.raises(ValueError, match="time_input"):
        get_score_fn(VPSDE(), MLP(), time_input="log_snr")
    with pytest.raises(ValueError, match="VESDE has no DDPM chain"):
        get_score_fn(VESDE(), MLP(), time_input="step")(torch.randn(2, 2), torch.rand(2))
