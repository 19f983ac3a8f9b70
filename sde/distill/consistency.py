"""Consistency distillation (Song et al. 2023, Algorithm 2).

On a Karras grid of N noise levels sigma_0 = sigma(eps) < ... < sigma_N-1 = sigma(T) (Karras
et al. 2022, Eq. 5, rho = 7; sigma = std / alpha, mapped to times by the SDE's inverse log-SNR),
x_n+1 = alpha x0 + std z is moved to sigma_n by one Heun step of the teacher's probability-flow
ODE dy/dsigma = (y - D(y)) / sigma in y = x / alpha, and the student's consistency function f_theta
(c_skip / c_out, f(x, eps) = x exactly: `sde.distill.student.Student(kind="consistency")`) is
pulled towards the EMA target f_theta- at the Heun point:
    L = E || f_theta(x_n+1, t_n+1) - f_theta-(x^_n, t_n) ||^2   (squared L2 metric, lambda = 1),
    theta- <- mu theta- + (1 - mu) theta  (stop-gradient target, mu = 0.95 in the paper).
"""

from __future__ import annotations

import copy

import torch

from sde.distill.base import Distiller, per_example_sq
from sde.sampling.grids import t_of_sigma
from sde.utils import append_dims, randn_like


def karras_times(sde, num_scales: int, *, eps: float = 1e-3, rho: float = 7.0) -> torch.Tensor:
    """N increasing times t_0 = eps < ... < t_N-1 = T, uniform in sigma^(1/rho) (float64)."""
    if num_scales < 2:
        raise ValueError(f"num_scales must be >= 2, got {num_scales}")
    ends = torch.tensor([eps, float(sde.T)], dtype=torch.float64)
    alpha, std = sde.marginal_coeffs(ends)
    s_min, s_max = (std / alpha) ** (1.0 / rho)
    u = torch.linspace(0.0, 1.0, num_scales, dtype=torch.float64)
    t = t_of_sigma(sde, (s_min + u * (s_max - s_min)) ** rho).clone()
    t[0], t[-1] = eps, float(sde.T)
    return t


def heun_step(sde, denoiser, x, t, s):
    """One Heun step of the probability-flow ODE from t to s, (Karras et al. 2022, Alg. 1), x-space."""
    (a_t, s_t), (a_s, s_s) = sde.marginal_coeffs(t), sde.marginal_coeffs(s)
    sig_t, sig_s = append_dims(s_t / a_t, x.ndim), append_dims(s_s / a_s, x.ndim)
    y = x / append_dims(a_t, x.ndim)
    d = (y - denoiser(x, t)) / sig_t
    y_euler = y + (sig_s - sig_t) * d
    d_next = (y_euler - denoiser(append_dims(a_s, x.ndim) * y_euler, s)) / sig_s
    return append_dims(a_s, x.ndim) * (y + (sig_s - sig_t) * 0.5 * (d + d_next))


class Consistency(Distiller):
    """Consistency distillation for `distill_steps` steps with N = `num_scales` levels."""

    name = "consistency"

    def __init__(self, teacher, student, *, steps: int = 1000, num_scales: int = 18,
                 mu: float = 0.95, rho: float = 7.0, **kwargs):
        super().__init__(teacher, student, **kwargs)
        if getattr(student, "kind", None) != "consistency":
            raise ValueError("consistency distillation needs Student(kind='consistency')")
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"mu (target EMA) must be in [0, 1), got {mu}")
        self.steps, self.mu = int(steps), float(mu)
        self.times = karras_times(self.sde, num_scales, eps=self.eps, rho=rho)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)

    @property
    def distill_steps(self) -> int:
        return self.steps

    def on_init_done(self) -> None:
        self.target.load_state_dict(self.student.state_dict())

    def distill_step(self, x0, k: int, generator) -> dict:
        n = torch.randint(0, len(self.times) - 1, (x0.shape[0],), generator=generator)
        t_n, t_next = self.times[n].to(x0), self.times[n + 1].to(x0)  # (B,)
        alpha, std = self.sde.marginal_coeffs(t_next)
        x_next = append_dims(alpha, x0.ndim) * x0 + append_dims(std, x0.ndim) * randn_like(
            x0, generator)
        with torch.no_grad():
            x_n = heun_step(self.sde, self.teacher.denoiser, x_next, t_next, t_n)
            target = self.target(x_n, t_n)
        loss = per_example_sq(self.train_student(x_next, t_next), target).mean()
        self.update(self.opt, self.student, loss)
        self.ema.update(self.student, k)
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), self.student.parameters()):
                p_t.lerp_(p, 1.0 - self.mu)
        return {"loss": loss.detach()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
