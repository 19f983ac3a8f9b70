"""Gaussian mixtures whose perturbed scores and log-densities are closed form under any SDE here.

Every SDE of `sde.sdes` is linear: x_t = alpha(t) x_0 + std(t) z. A mixture
p_0 = sum_k w_k N(mu_k, diag(s_k^2)) therefore stays a mixture,
p_t = sum_k w_k N(alpha(t) mu_k, diag(alpha(t)^2 s_k^2 + std(t)^2)),
whose score and log-density are exact. `mixture.score_fn(sde)` is a `score_fn(x, t)` that
samplers and the likelihood take like a trained network's, to study them without training.
"""

from __future__ import annotations

import math

import torch

from sde.utils import append_dims, randn


class GaussianMixture:
    """sum_k w_k N(mu_k, diag(s_k^2)) on examples of `event_shape` (e.g. `(2,)` or `(C, H, W)`).

    means: (K, *event_shape); stds: a float, (K,) or (K, *event_shape); weights: (K,), normalised
    here. Parameters are kept in float64; results come back in the input's dtype.
    """

    def __init__(self, means, stds=1.0, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim < 2:
            raise ValueError(f"means must be (K, *event_shape), got shape {tuple(means.shape)}")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64)
        stds = stds.reshape(k, *([1] * (means.ndim - 1))) if stds.ndim == 1 else stds
        stds = torch.broadcast_to(stds, means.shape).clone()
        if (stds <= 0).any():
            raise ValueError("stds must be > 0")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights <= 0).any():
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        self.means, self.stds = means, stds  # (K, *event)
        self.weights = weights / weights.sum()  # (K,)
        self.event_shape = tuple(means.shape[1:])

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, generator=None, *, alpha=1.0, std=0.0, return_labels=False,
               device=None, dtype=torch.float32):
        """n samples of p_t = mixture with means alpha mu_k and variances alpha^2 s_k^2 + std^2
        (alpha=1, std=0: the data); with `return_labels` also the component of each (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if isinstance(generator, torch.Generator) else None)
        labels = torch.searchsorted(torch.cumsum(self.weights, 0).to(u.device), u).clamp_max(
            self.num_components - 1).cpu()
        noise = randn((n, *self.event_shape), generator, dtype=torch.float64).cpu()
        scale = torch.sqrt(alpha**2 * self.stds[labels] ** 2 + std**2)
        x = (alpha * self.means[labels] + scale * noise).to(device=device, dtype=dtype)
        return (x, labels) if return_labels else x

    def sample_marginal(self, sde, t: float, n: int, generator=None, **kwargs):
        """n exact samples of p_t under `sde` at time t (a float)."""
        alpha, std = sde.marginal_coeffs(torch.tensor([float(t)], dtype=torch.float64))
        return self.sample(n, generator, alpha=alpha.item(), std=std.item(), **kwargs)

    # --- densities -----------------------------------------------------------------------------
    def _components(self, x, alpha, std):
        """Per-example component means (B, K, D) and variances (B, K, D) at (alpha, std) (B,)."""
        mu = self.means.to(x.device).flatten(1)  # (K, D)
        s2 = self.stds.to(x.device).flatten(1) ** 2
        a, sd = alpha.to(torch.float64)[:, None, None], std.to(torch.float64)[:, None, None]
        return a * mu, a**2 * s2 + sd**2

    def _log_joint(self, x, alpha, std):
        """log w_k N(x; m_k, v_k) (B, K), the residuals (B, K, D) and variances (B, K, D)."""
        x64 = x.to(torch.float64).flatten(1)[:, None, :]  # (B, 1, D); differentiable in x
        mean, var = self._components(x, alpha, std)
        diff = x64 - mean
        log_n = -0.5 * ((diff**2 / var) + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights.to(x.device)) + log_n, diff, var

    def _coeffs(self, x, t, sde):
        if sde is None:
            ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return ones, torch.zeros_like(ones)
        return sde.marginal_coeffs(torch.as_tensor(t, dtype=torch.float64, device=x.device)
                                   .expand(x.shape[0]))

    def log_prob(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """log p_t(x) in nats (B,); the data density when `sde` is None."""
        log_joint, _, _ = self._log_joint(x, *self._coeffs(x, t, sde))
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """grad_x log p_t(x), shaped like x: sum_k r_k(x) (m_k - x) / v_k with responsibilities r_k."""
        log_joint, diff, var = self._log_joint(x, *self._coeffs(x, t, sde))
        resp = torch.softmax(log_joint, dim=1)[..., None]  # (B, K, 1)
        return (-(resp * diff / var).sum(1)).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde):
        """The exact `score_fn(x, t)` of this mixture perturbed by `sde`."""
        return lambda x, t: self.score(x, t, sde)

    def log_prob_fn(self, sde):
        """The exact `log p_t(x)` as a function `(x, t) -> (B,)`."""
        return lambda x, t: self.log_prob(x, t, sde)

    def denoiser(self, sde):
        """E[x_0 | x_t] = (x_t + std^2 score) / alpha (Tweedie's formula), as `(x, t) -> x0`."""
        def x0(x, t):
            alpha, std = sde.marginal_coeffs(t)
            s = self.score(x, t, sde)
            return (x + append_dims(std**2, x.ndim) * s) / append_dims(alpha, x.ndim)
        return x0

    # --- handy mixtures ------------------------------------------------------------------------
    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.2, weights=None):
        """k modes on a circle in 2-D, the usual toy benchmark."""
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(means, std, weights)

    @classmethod
    def random(cls, k: int, event_shape, *, spread: float = 1.0, std=(0.1, 0.5), seed: int = 0):
        """k modes with means ~ N(0, spread^2), per-dimension stds uniform in `std`, random weights."""
        g = torch.Generator().manual_seed(seed)
        shape = (k, *tuple(event_shape))
        means = spread * torch.randn(shape, generator=g, dtype=torch.float64)
        stds = std[0] + (std[1] - std[0]) * torch.rand(shape, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)
