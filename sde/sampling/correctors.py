"""Correctors of the predictor-corrector sampler (Algorithms 4-5 of Song et al. 2021).

A corrector runs `n_steps` of Langevin MCMC at a fixed time t, x <- x + h score + sqrt(2h) z,
pulling x towards p_t. Each is built as `Cls(sde, score_fn, snr, n_steps)` and has
`update_fn(x, t, generator=None) -> (x, x_mean)`. The step size h is scaled by
`sde.langevin_scale(t)` (alpha_i = 1 - beta_i for VP and sub-VP, 1 for VE), as in score_sde.
"""

from __future__ import annotations

import torch

from sde.utils import append_dims, lookup, randn_like


class Corrector:
    """Base class: stores the SDE, the score function, the target signal-to-noise ratio and the
    number of Langevin steps per time."""

    def __init__(self, sde, score_fn, snr: float, n_steps: int):
        if not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        if int(n_steps) != n_steps or n_steps < 0:
            raise ValueError(f"n_steps must be an integer >= 0, got {n_steps}")
        self.sde, self.score_fn, self.snr, self.n_steps = sde, score_fn, float(snr), int(n_steps)

    def step_size(self, x, t, grad, noise) -> torch.Tensor:
        """Langevin step size h (B,)."""
        raise NotImplementedError

    def check_steps(self, t: torch.Tensor) -> str | None:
        """What is wrong with the step-size factor alpha_i at the times t (N,), or None: it must
        be finite and > 0 (for DDPM's chain alpha_i = 1 - beta_i)."""
        if self.n_steps == 0:
            return None
        scale = self.sde.langevin_scale(t.to(torch.float64))
        bad = ~(torch.isfinite(scale) & (scale > 0))
        if not bool(bad.any()):
            return None
        return (f"the Langevin step factor alpha_i = {scale[bad][0].item():.4g} <= 0 at "
                f"t = {t[bad.nonzero()[0, 0]].item():.4g}")

    def update_fn(self, x: torch.Tensor, t: torch.Tensor, generator=None):
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            noise = randn_like(x, generator)
            h = append_dims(self.step_size(x, t, grad, noise), x.ndim)
            x_mean = x + h * grad
            x = x_mean + torch.sqrt(2 * h) * noise
        return x, x_mean


class LangevinCorrector(Corrector):
    """Langevin MCMC with the signal-to-noise step rule (Algorithms 4-5 of Song et al. 2021):
    h = 2 alpha_i (snr |z| / |score|)^2. The norms are averaged over the batch as in score_sde (so
    a sample depends on its batch companions), or taken per example with `per_example=True` (a
    sample then depends only on its own noise, whatever the batch size)."""

    def __init__(self, sde, score_fn, snr: float, n_steps: int, *, per_example: bool = False):
        super().__init__(sde, score_fn, snr, n_steps)
        self.per_example = bool(per_example)

    def step_size(self, x, t, grad, noise):
        grad_norm = grad.flatten(1).norm(dim=-1)  # (B,)
        noise_norm = noise.flatten(1).norm(dim=-1)
        if not self.per_example:
            grad_norm, noise_norm = grad_norm.mean(), noise_norm.mean()
        h = 2 * (self.snr * noise_norm / grad_norm) ** 2 * self.sde.langevin_scale(t)
        return h.to(x.dtype)


class AnnealedLangevinDynamics(Corrector):
    """Annealed Langevin dynamics of SMLD (Algorithm 1 of Song & Ermon 2019) in score_sde's form:
    h = 2 alpha_i (snr std(t))^2, with std(t) the perturbation kernel's std."""

    def step_size(self, x, t, grad, noise):
        std = self.sde.marginal_coeffs(t)[1]
        h = 2 * (self.snr * std) ** 2 * self.sde.langevin_scale(t)
        return h.to(x.dtype)


class NoneCorrector(Corrector):
    """The identity: predictor-only sampling (snr and n_steps are ignored)."""

    def __init__(self, sde, score_fn, snr: float = 0.0, n_steps: int = 0, **unused):
        self.sde, self.score_fn, self.snr, self.n_steps = sde, score_fn, snr, n_steps

    def check_steps(self, t):
        return None

    def update_fn(self, x, t, generator=None):
        return x, x


CORRECTORS = {
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinDynamics,
    "none": NoneCorrector,
}


def get_corrector(name: str) -> type[Corrector]:
    """The corrector class registered under `name`."""
    return lookup(CORRECTORS, name, "corrector")
