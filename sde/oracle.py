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


def time_coeffs(x, t, sde):
    """(alpha(t), std(t)) (B,) in float64 for a batch x; (1, 0), the data, when `sde` is None."""
    if sde is None:
        ones = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        return ones, torch.zeros_like(ones)
    return sde.marginal_coeffs(torch.as_tensor(t, dtype=torch.float64, device=x.device)
                               .expand(x.shape[0]))


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
        return time_coeffs(x, t, sde)

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

    # --- exact posteriors ----------------------------------------------------------------------
    def posterior(self, A, y, noise_std: float = 0.0) -> FullCovarianceMixture:
        """p(x | y) for y = A x + N(0, noise_std^2 I), A (M, D) on flattened x: a full-covariance
        mixture (Bishop 2006, Eq. 2.116, per component in its Kalman form, which allows
        noise_std = 0) with weights w_k N(y; A mu_k, A S_k A^T + noise_std^2 I)."""
        A = torch.as_tensor(A, dtype=torch.float64)
        mu, s2 = self.means.flatten(1), self.stds.flatten(1) ** 2  # (K, D)
        if A.ndim != 2 or A.shape[1] != mu.shape[1]:
            raise ValueError(f"A must be (M, {mu.shape[1]}) for examples of {self.event_shape}, "
                             f"got {tuple(A.shape)}")
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must hold {A.shape[0]} values (one per row of A), got {y.numel()}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        AS = A[None] * s2[:, None, :]  # A S_k (K, M, D)
        G = AS @ A.T + noise_std**2 * torch.eye(A.shape[0], dtype=torch.float64)  # (K, M, M)
        residual = y[None] - mu @ A.T  # (K, M)
        gain = torch.linalg.solve(G, AS)  # G^-1 A S_k (K, M, D)
        means = mu + torch.einsum("kmd,km->kd", gain, residual)
        covs = torch.diag_embed(s2) - torch.einsum("kmd,kme->kde", AS, gain)
        evidence = torch.distributions.MultivariateNormal(torch.zeros_like(residual), G)
        log_w = torch.log(self.weights) + evidence.log_prob(residual)
        return FullCovarianceMixture(means, covs, torch.softmax(log_w, 0),
                                     event_shape=self.event_shape)

    def condition(self, mask, y) -> FullCovarianceMixture:
        """p(x | x[mask] = y[mask]) (mask and y shaped like one example, 1 = observed): the
        posterior of a noiseless coordinate measurement, exactly y on the observed entries."""
        mask = torch.as_tensor(mask).reshape(-1).bool()
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if mask.shape != y.shape or mask.numel() != self.means[0].numel():
            raise ValueError(f"mask and y must be shaped like one example {self.event_shape}")
        post = self.posterior(torch.eye(mask.numel(), dtype=torch.float64)[mask], y[mask])
        post.means[:, mask] = y[mask]  # exactly y, not y up to rounding
        post.covs[:, mask, :] = 0.0
        post.covs[:, :, mask] = 0.0
        return FullCovarianceMixture(post.means, post.covs, post.weights, event_shape=self.event_shape)


class FullCovarianceMixture:
    """sum_k w_k N(m_k, C_k) with full (possibly singular) covariances C_k (K, D, D) on examples of
    `event_shape` (D values each), perturbed in closed form by any SDE here: p_t has components
    N(alpha m_k, alpha^2 C_k + std^2 I). What `GaussianMixture.posterior` returns."""

    def __init__(self, means, covs, weights=None, *, event_shape=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be ({k}, {d}, {d}), got {tuple(covs.shape)}")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        self.means, self.covs, self.weights = means, 0.5 * (covs + covs.mT), weights / weights.sum()
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # C_k = Q diag(lambda) Q^T
        self.eigvals = eigvals.clamp_min(0.0)  # (K, D); zero on observed coordinates

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean_and_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and covariance (D, D) of the mixture (law of total covariance)."""
        mean = self.weights @ self.means
        second = torch.einsum("k,kde->de", self.weights,
                              self.covs + self.means[:, :, None] * self.means[:, None, :])
        return mean, second - mean[:, None] * mean[None, :]

    def sample(self, n: int, generator=None, *, alpha=1.0, std=0.0, device=None,
               dtype=torch.float32):
        """n samples of the mixture perturbed to N(alpha m_k, alpha^2 C_k + std^2 I)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if isinstance(generator, torch.Generator) else None)
        labels = torch.searchsorted(torch.cumsum(self.weights, 0).to(u.device), u).clamp_max(
            self.num_components - 1).cpu()
        z = randn((n, self.means.shape[1]), generator, dtype=torch.float64).cpu()
        scale = torch.sqrt(alpha**2 * self.eigvals[labels] + std**2)  # (n, D)
        x = alpha * self.means[labels] + torch.einsum("nde,ne->nd", self.eigvecs[labels], scale * z)
        return x.reshape(n, *self.event_shape).to(device=device, dtype=dtype)

    def sample_marginal(self, sde, t: float, n: int, generator=None, **kwargs):
        """n exact samples of p_t under `sde` at time t (a float)."""
        alpha, std = sde.marginal_coeffs(torch.tensor([float(t)], dtype=torch.float64))
        return self.sample(n, generator, alpha=alpha.item(), std=std.item(), **kwargs)

    def _log_joint(self, x, t, sde):
        """log w_k N(x; m_k(t), S_k(t)) (B, K) and S_k(t)^-1 (m_k(t) - x) (B, K, D)."""
        x64 = x.to(torch.float64).flatten(1)  # (B, D); differentiable in x
        alpha, std = time_coeffs(x, t, sde)
        alpha, std = alpha.to(torch.float64)[:, None, None], std.to(torch.float64)[:, None, None]
        diff = alpha * self.means.to(x.device)[None] - x64[:, None, :]  # (B, K, D)
        q = self.eigvecs.to(x.device)
        lam = alpha**2 * self.eigvals.to(x.device)[None] + std**2  # eigenvalues of S_k(t)
        proj = torch.einsum("kde,bkd->bke", q, diff)  # Q^T diff
        log_n = -0.5 * ((proj**2 / lam) + torch.log(2 * math.pi * lam)).sum(-1)
        precision_diff = torch.einsum("kde,bke->bkd", q, proj / lam)
        return torch.log(self.weights.to(x.device)) + log_n, precision_diff

    def log_prob(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """log p_t(x) in nats (B,); at t = 0 only if every C_k is nonsingular."""
        return torch.logsumexp(self._log_joint(x, t, sde)[0], dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) S_k(t)^-1 (m_k(t) - x), shaped like x."""
        log_joint, precision_diff = self._log_joint(x, t, sde)
        resp = torch.softmax(log_joint, dim=1)[..., None]  # (B, K, 1)
        return (resp * precision_diff).sum(1).reshape(x.shape).to(x.dtype)

    def score_fn(self, sde):
        """The exact `score_fn(x, t)` of this mixture perturbed by `sde`."""
        return lambda x, t: self.score(x, t, sde)

    def log_prob_fn(self, sde):
        return lambda x, t: self.log_prob(x, t, sde)


class LabelledMixture(GaussianMixture):
    """A GaussianMixture whose components carry class labels (K,) in 0..C-1: p(x | c) is the
    mixture of the components labelled c, with exact p_t(x | c), p_t(c | x) and their scores."""

    def __init__(self, means, stds=1.0, weights=None, *, labels):
        super().__init__(means, stds, weights)
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (self.num_components,) or (labels < 0).any():
            raise ValueError(f"labels must be {self.num_components} integers >= 0, got {labels}")
        self.labels, self.num_classes = labels, int(labels.max()) + 1
        if torch.bincount(labels, minlength=self.num_classes).min() == 0:
            raise ValueError(f"every class 0..{self.num_classes - 1} needs a component")

    def class_probs(self) -> torch.Tensor:
        """p(c) (C,): the summed weights of each class's components."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
            0, self.labels, self.weights)

    def conditional(self, c: int) -> GaussianMixture:
        """p(x | c) as a GaussianMixture."""
        keep = self.labels == int(c)
        return GaussianMixture(self.means[keep], self.stds[keep], self.weights[keep])

    def _class_log_joint(self, x, t, sde):
        """log p(c) p_t(x | c) (B, C), by log-sum-exp over each class's components."""
        log_joint, _, _ = self._log_joint(x, *self._coeffs(x, t, sde))  # (B, K)
        onehot = self.labels[None, :] == torch.arange(self.num_classes)[:, None]  # (C, K)
        masked = torch.where(onehot.to(x.device)[None], log_joint[:, None, :], -math.inf)
        return torch.logsumexp(masked, dim=-1)

    def class_log_prob(self, x: torch.Tensor, t=None, sde=None) -> torch.Tensor:
        """log p_t(c | x) (B, C) in nats: the exact noisy classifier."""
        log_joint = self._class_log_joint(x, t, sde)
        return (log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)).to(x.dtype)

    def conditional_score(self, x: torch.Tensor, t, sde, labels) -> torch.Tensor:
        """grad_x log p_t(x | c_b) for labels (B,) (or one int), shaped like x."""
        log_joint, diff, var = self._log_joint(x, *self._coeffs(x, t, sde))
        labels = torch.as_tensor(labels, device=x.device).expand(x.shape[0])
        own = self.labels.to(x.device)[None, :] == labels[:, None]  # (B, K)
        resp = torch.softmax(torch.where(own, log_joint, -math.inf), dim=1)[..., None]
        return (-(resp * diff / var).sum(1)).reshape(x.shape).to(x.dtype)

    def conditional_score_fn(self, sde, labels):
        """The exact `score_fn(x, t)` of p_t(x | c) for labels (B,) or one int."""
        return lambda x, t: self.conditional_score(x, t, sde, labels)
