"""The student of every distillation: a network wrapped into a denoiser x0 = D(x, t).

Progressive distillation and ADD students are plain denoisers (Salimans & Ho 2022 use the x0
parametrisation); the consistency student adds the boundary-respecting skip/out
parametrisation of Song et al. (2023, Eq. 3 and App. C). A student wraps a network of the
teacher's own kind, read through the teacher's own `get_score_fn` options, so its first weights
can be the teacher's, and `get_score_fn(sde, student, prediction="x0", time_scale=1.0)` makes it a
`score_fn` that every sampler takes.
"""

from __future__ import annotations

import torch
from torch import nn

from sde.models import get_score_fn
from sde.utils import append_dims

KINDS = ("denoiser", "consistency")


def noise_level(sde, t: torch.Tensor) -> torch.Tensor:
    """sigma(t) = std(t) / alpha(t) (B,), the noise level of y = x / alpha (Karras et al. 2022)."""
    alpha, std = sde.marginal_coeffs(t)
    return std / alpha


def consistency_coeffs(sigma, sigma_min: float, sigma_data: float):
    """(c_skip, c_out) of Song et al. (2023, App. C): c_skip(sigma_min) = 1, c_out(sigma_min) = 0."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def edm_coeffs(sigma, sigma_data: float):
    """(c_skip, c_out) of EDM (Karras et al. 2022, Table 1), the limit of the above for large sigma."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    return c_skip, sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)


class Student(nn.Module):
    """x0 = D(x, t) from `net(x, cond)` read with the `get_score_fn` options `score`.

    kind="denoiser": D = E[x0 | x_t] by Tweedie's formula (the net's output directly when it
    predicts x0). kind="consistency": f(x, t) = c_skip x + c_out F with F the net's EDM-raw output
    F = (D - c_skip_edm x) / c_out_edm, so f(x, eps) = x exactly and f ~ D at high noise.
    """

    def __init__(self, net: nn.Module, sde, *, kind: str = "denoiser", score: dict | None = None,
                 eps: float = 1e-3, sigma_data: float = 0.5):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown student kind {kind!r}; choose one of {list(KINDS)}")
        self.net, self.sde, self.kind = net, sde, kind
        self.score = dict(score or {})
        self.eps, self.sigma_data = float(eps), float(sigma_data)

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] as the wrapped network estimates it, shaped like x: its output for x0
        prediction, alpha x - std v normalised for v prediction (Salimans & Ho 2022, Eq. 9-10,
        no division by alpha), Tweedie's formula on its score otherwise."""
        prediction = self.score.get("prediction", "eps")
        alpha, std = self.sde.marginal_coeffs(t.to(x.dtype))
        if prediction in ("x0", "v") and self.score.get("time_input", "t") == "t":
            out = self.net(x, (self.score.get("time_scale", 999.0) * t).to(x.dtype))
            if prediction == "x0":
                return out
            a, s = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
            return (a * x - s * out) / (a**2 + s**2)
        score = get_score_fn(self.sde, self.net, **self.score)(x, t)
        return (x + append_dims(std**2, x.ndim) * score) / append_dims(alpha, x.ndim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The student's x0 estimate at (x, t), x (B, ...), t (B,)."""
        d = self.denoise(x, t)
        if self.kind == "denoiser":
            return d
        t_min = torch.full_like(t, self.eps)
        sigma, sigma_min = noise_level(self.sde, t), noise_level(self.sde, t_min)
        c_skip, c_out = consistency_coeffs(sigma, sigma_min, self.sigma_data)
        e_skip, e_out = edm_coeffs(sigma, self.sigma_data)
        raw = (d - append_dims(e_skip, x.ndim) * x) / append_dims(e_out, x.ndim)
        return append_dims(c_skip.to(x.dtype), x.ndim) * x + append_dims(
            c_out.to(x.dtype), x.ndim) * raw


def student_score_fn(sde, student: nn.Module):
    """The student as a `score_fn(x, t)` (x0 prediction read by `get_score_fn`)."""
    return get_score_fn(sde, student, prediction="x0", time_input="t", time_scale=1.0)
