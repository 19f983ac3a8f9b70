"""Score networks and the one wrapper that turns a network into `score_fn(x, t)`.

A network is `model(x, cond, **model_kwargs)`. What it sees as `cond` (`time_input`) and what
it predicts (`prediction`) are options of `get_score_fn`; the SDE supplies alpha(t) and std(t)
through `marginal_coeffs`, so the wrapper never branches on the SDE's class.

time_input
    "t"          cond = time_scale * t (999 t: score_sde's continuous VP / sub-VP models)
    "sigma"      cond = std(t) (score_sde's continuous VE models)
    "log_sigma"  cond = ln(sigma) / 4, sigma = std / alpha: EDM's c_noise (Karras et al. 2022,
                 Table 1) for any prediction; the toy experiments' cond (with a Fourier embedding)
    "step"       cond = t (N - 1) as a float and std = sqrt(1 - alphas_cumprod[floor]) (DDPM
                 discrete VP models, exactly as score_sde); needs an SDE with a DDPM chain
    "smld_step"  cond = round((T - t)(N - 1)), the index into descending sigmas, and the std of
                 that step (score_sde's discrete VE / SMLD models)
std
    "exact"      std(t) from `sde.marginal_coeffs` (accurate at every t)
    "score_sde"  std(t) rounded as score_sde computes it (`sde.score_sde_std`), to reproduce
                 converted score_sde checkpoints bit for bit (differs by ~1e-4 at t = 1e-3)
prediction
    "eps"           network predicts the noise: score = -out / std
    "score"         network predicts the score itself (e.g. NCSN++ with scale_by_sigma)
    "scaled_score"  network predicts std * score (= -eps): score = out / std
    "x0"            network predicts the clean data: score = (alpha out - x) / std^2
    "v"             network predicts v = alpha eps - std x0 (Salimans & Ho 2022, Sec. 4), any SDE:
                    eps = (std x + alpha v) / (alpha^2 + std^2), score = -eps / std
    "edm"           EDM's preconditioning (Karras et al. 2022, Table 1, Eq. 7) for any SDE, with
                    sigma = std / alpha and y = x / alpha: D(y) = c_skip y + c_out F(c_in y,
                    c_noise), score = (alpha D - x) / std^2; the network sees c_noise = log(sigma)
                    / 4 as its cond (time_input only supplies alpha and std), `sigma_data` sets
                    the data scale. Computed in forms that stay finite where alpha = 0.
"""

from __future__ import annotations

import torch

from sde.models.ddpm import DDPM
from sde.models.mlp import MLP
from sde.models.ncsnpp import NCSNpp
from sde.utils import append_dims

TIME_INPUTS = ("t", "sigma", "log_sigma", "step", "smld_step")
PREDICTIONS = ("eps", "score", "scaled_score", "x0", "v", "edm")
STDS = ("exact", "score_sde")


def _check_option(name: str, value, known) -> None:
    if value not in known:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(known)}")


def model_time(sde, t: torch.Tensor, time_input: str = "t", time_scale: float = 999.0,
               std: str = "exact"):
    """(cond, alpha, std), each (B,): what the network sees at time t, and the kernel's
    coefficients used to turn its output into a score."""
    _check_option("time_input", time_input, TIME_INPUTS)
    _check_option("std", std, STDS)
    if time_input == "step":
        return _discrete_vp_time(sde, t)
    if time_input == "smld_step":
        labels = torch.round((sde.T - t) * (sde.N - 1))
        alpha, std = sde.marginal_coeffs(sde.T - labels / (sde.N - 1))
        return labels, alpha, std
    alpha, sd = sde.marginal_coeffs(t)
    sd = sde.score_sde_std(t) if std == "score_sde" else sd
    if time_input == "log_sigma":
        return c_noise(alpha, sd), alpha, sd
    return (sd if time_input == "sigma" else time_scale * t), alpha, sd


def c_noise(alpha: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """EDM's c_noise = ln(sigma) / 4 with sigma = std / alpha, (B,); finite where alpha = 0 (alpha is
    clamped at the smallest normal float: the network's output is multiplied by alpha = 0 there)."""
    tiny = torch.finfo(alpha.dtype).tiny
    return 0.25 * (torch.log(std) - torch.log(alpha.clamp_min(tiny)))


def _discrete_vp_time(sde, t: torch.Tensor):
    """The DDPM chain's label t (N - 1) and sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)."""
    labels = t * (sde.N - 1)
    alpha, std = sde.discrete_marginal(labels.long(), t, chain="ddpm")  # raises without the chain
    return labels, alpha, std


def output_to_score(out, x, alpha, std, prediction: str = "eps") -> torch.Tensor:
    """Turn a network output into the score of p_t (Eq. 4: grad log N(x; alpha x0, std^2 I))."""
    _check_option("prediction", prediction, PREDICTIONS)
    if prediction == "score":
        return out
    if prediction == "eps":
        return -out / append_dims(std, x.ndim)
    if prediction == "scaled_score":
        return out / append_dims(std, x.ndim)
    if prediction == "edm":
        raise ValueError("prediction='edm' scales the network's input too: use get_score_fn")
    alpha, std = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
    if prediction == "v":
        return -(std * x + alpha * out) / (std * (alpha**2 + std**2))
    return (alpha * out - x) / std**2


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in, c_noise) of EDM's preconditioning (Karras et al. 2022, Table 1)."""
    sd2 = sigma_data**2
    total = sigma**2 + sd2
    return sd2 / total, sigma * sigma_data / total.sqrt(), 1.0 / total.sqrt(), sigma.log() / 4


def _edm_score(model, x, alpha, std, sigma_data, kwargs):
    """score = (alpha D - x) / std^2 with EDM's D(y) = c_skip y + c_out F(c_in y, c_noise), written
    in x: with r = sqrt(std^2 + alpha^2 sigma_data^2) = alpha sqrt(sigma^2 + sigma_data^2),
    c_in y = x / r and score = (alpha sigma_data F / std - x / r) / r (finite at alpha = 0)."""
    r = append_dims(torch.sqrt(std**2 + (alpha * sigma_data) ** 2), x.ndim)
    out = model(x / r, c_noise(alpha, std), **kwargs)
    a, s = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
    return (a * sigma_data * out / s - x / r) / r


def get_score_fn(sde, model, *, prediction: str = "eps", time_input: str = "t",
                 time_scale: float = 999.0, std: str = "exact", sigma_data: float = 0.5,
                 model_kwargs: dict | None = None):
    """Wrap `model(x, cond, **model_kwargs)` into `score_fn(x, t)` for any SDE.

    Train/eval mode is the caller's business: this never calls `model.train()` / `.eval()`.
    `sigma_data` is used by prediction="edm" only.
    """
    _check_option("prediction", prediction, PREDICTIONS)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
    _check_option("time_input", time_input, TIME_INPUTS)
    _check_option("std", std, STDS)
    kwargs = dict(model_kwargs or {})

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, alpha, sd = model_time(sde, t, time_input, time_scale, std)
        alpha, sd = alpha.to(x.dtype), sd.to(x.dtype)
        if prediction == "edm":
            return _edm_score(model, x, alpha, sd, float(sigma_data), kwargs)
        return output_to_score(model(x, cond, **kwargs), x, alpha, sd, prediction)

    return score_fn


def get_denoiser_fn(sde, score_fn):
    """Tweedie's formula: E[x_0 | x_t] = (x + std^2 score) / alpha, as `denoiser(x, t)`."""

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, std = sde.marginal_coeffs(t.to(x.dtype))
        return (x + append_dims(std**2, x.ndim) * score_fn(x, t)) / append_dims(alpha, x.ndim)

    return denoiser


from sde.models.classifier import NCSNppClassifier, get_classifier_fn  # noqa: E402

__all__ = ["MLP", "NCSNpp", "NCSNppClassifier", "DDPM", "get_score_fn", "get_classifier_fn",
           "get_denoiser_fn", "model_time", "edm_coefficients", "output_to_score", "TIME_INPUTS",
           "PREDICTIONS", "STDS"]
