"""Training objectives, one short function per formulation.

Every loss takes `(sde, score_fn, x, *, generator=None, ...)` and returns the per-example loss,
shaped `(B,)`; the trainer averages it. `score_fn(x, t)` is the network wrapped by
`sde.models.get_score_fn`, so the same loss trains any output parametrisation (eps, score, x0).
All noise and times come from `generator`. With `t=` (and for the discrete losses `t` on the grid
i T / (N - 1)) a loss is evaluated at fixed times instead of sampled ones, which is what the tests
use. Hydra builds them with `_partial_: true` (see conf/loss/).
"""

from __future__ import annotations

import torch

from sde.utils import append_dims, randn_like


def _reduce(sq: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """(B, ...) squared errors -> (B,), averaged or summed over the data dimensions."""
    sq = sq.flatten(1)
    return sq.mean(1) if reduce_mean else sq.sum(1)


def _uniform(shape, generator, device, low: float, high: float) -> torch.Tensor:
    """U(low, high) samples on `device` from `generator` (float32)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device)
    return (low + (high - low) * u).to(device)


def _perturb(x, alpha, std, z) -> torch.Tensor:
    """x_t = alpha x + std z: a draw of the perturbation kernel p_0t(x_t | x) (Eq. 29, 4)."""
    return append_dims(alpha, x.ndim) * x + append_dims(std, x.ndim) * z  # (B, ...)


def _perturbed_score_error(score_fn, x, t, alpha, std, z) -> torch.Tensor:
    """std * s(x_t, t) + z at x_t = alpha x + std z: the eps-error of Eq. 7 (Song et al. 2021)."""
    x_t = _perturb(x, alpha, std, z)
    score = score_fn(x_t, t)
    return append_dims(std, x.ndim) * score.to(z.dtype) + z


def importance_times(sde, n, *, eps=1e-5, generator=None, device=None):
    """Times t ~ p(t) proportional to g(t)^2 / std(t)^2 on [eps, T'], T' = `sde.sampling_T`, and
    the weight that makes lambda(t) = g(t)^2 unbiased: returns (t, w) with w = Z / (T' - eps) and
    Z the normaliser. (T' = T unless alpha(T) = 0, where log-SNR(T) = -inf and g(T) = inf.)

    For every linear SDE g^2 / std^2 = -d log_snr / dt, so log_snr(t) is uniform under p(t) and
    t = t_from_log_snr(U). This is the variance-reduced likelihood weighting of Song, Durkan,
    Murray & Ermon (2021, Sec. 5): g^2 ||s + z/std||^2 / p(t) = Z ||std s + z||^2.
    """
    end = sde.sampling_T
    ends = sde.log_snr(torch.tensor([eps, end], dtype=torch.float64))
    lam = ends[1] + (ends[0] - ends[1]) * _uniform((n,), generator, device, 0.0, 1.0).double().cpu()
    t = sde.t_from_log_snr(lam).clamp(eps, end).to(device=device, dtype=torch.float32)
    return t, float(ends[0] - ends[1]) / (end - eps)


def dsm_loss(sde, score_fn, x, *, generator=None, eps=1e-5, likelihood_weighting=False,
             importance_sampling=False, reduce_mean=True, t=None) -> torch.Tensor:
    """Continuous weighted denoising score matching (Eq. 7 of Song et al. 2021), (B,).

    lambda(t) = std(t)^2 by default: E ||std s(x_t, t) + z||^2 with t ~ U(eps, T'), T' =
    `sde.sampling_T` (T, or just below it where alpha(T) = 0: the times the samplers use).
    `likelihood_weighting`: lambda(t) = g(t)^2, E g^2 ||s + z / std||^2, which bounds the
    negative log-likelihood (Song, Durkan, Murray & Ermon 2021, Thm. 1); with
    `importance_sampling` t is drawn from p(t) ~ g^2/std^2 instead: same expectation, lower
    variance.
    """
    if importance_sampling and not likelihood_weighting:
        raise ValueError("importance_sampling=True needs likelihood_weighting=True "
                         "(it samples t for the weight lambda(t) = g(t)^2)")
    weight = None
    if t is None and importance_sampling:
        t, weight = importance_times(sde, x.shape[0], eps=eps, generator=generator, device=x.device)
    elif t is None:
        t = _uniform((x.shape[0],), generator, x.device, eps, sde.sampling_T)
    z = randn_like(x, generator)
    alpha, std = sde.marginal_coeffs(t.to(x.dtype))
    sq = _perturbed_score_error(score_fn, x, t, alpha, std, z) ** 2  # (B, ...)
    if likelihood_weighting and weight is not None:
        return _reduce(sq, reduce_mean) * weight
    if likelihood_weighting:
        g2 = sde.sde(torch.zeros_like(x), t.to(x.dtype))[1] ** 2  # (B,)
        return _reduce(sq, reduce_mean) * g2 / std**2
    return _reduce(sq, reduce_mean)


def _grid_index(sde, x, generator, t):
    """Uniform index i in {0..N-1} (or the index of given times t) and its time i T / (N - 1)."""
    if t is None:
        gen_device = generator.device if generator is not None else x.device
        i = torch.randint(0, sde.N, (x.shape[0],), generator=generator, device=gen_device)
        i = i.to(x.device)
    else:
        i = sde.timestep(t)
    return i, i.to(x.dtype) * sde.T / max(sde.N - 1, 1)


def ddpm_loss(sde, score_fn, x, *, generator=None, reduce_mean=True, t=None) -> torch.Tensor:
    """DDPM's simple loss ||eps_theta(x_i, i) - eps||^2 (Ho et al. 2020, Eq. 14), (B,).

    x_i = sqrt(abar_i) x + sqrt(1 - abar_i) eps with the DDPM chain of the SDE
    (`sde.discrete_marginal`: VPSDE, CosineVPSDE; others raise); the network's
    eps is -sqrt(1 - abar_i) s(x_i, t_i), t_i = i T / (N - 1), so this is the sigma^2-weighted DSM
    loss at the discrete noise levels.
    """
    i, t_i = _grid_index(sde, x, generator, t)
    alpha, std = sde.discrete_marginal(i, x, chain="ddpm")  # (B,)
    z = randn_like(x, generator)
    sq = _perturbed_score_error(score_fn, x, t_i, alpha, std, z) ** 2
    return _reduce(sq, reduce_mean)


def smld_loss(sde, score_fn, x, *, generator=None, reduce_mean=True, t=None) -> torch.Tensor:
    """NCSN's loss sigma_i^2 ||s(x + sigma_i z, sigma_i) + z / sigma_i||^2 (Song & Ermon 2019,
    Eq. 5 with lambda = sigma^2), (B,), over the discrete sigmas of a VESDE."""
    i, t_i = _grid_index(sde, x, generator, t)
    alpha, sigma = sde.discrete_marginal(i, x, chain="smld")  # (B,), alpha = 1
    z = randn_like(x, generator)
    sq = _perturbed_score_error(score_fn, x, t_i, alpha, sigma, z) ** 2
    return _reduce(sq, reduce_mean)


def edm_loss(sde, score_fn, x, *, generator=None, P_mean=-1.2, P_std=1.2, sigma_data=0.5,
             eps=1e-5, reduce_mean=True, t=None) -> torch.Tensor:
    """EDM's loss (Karras et al. 2022, Eq. 2 and 8, Table 1), (B,): lambda(sigma) ||D(y; sigma) -
    x||^2 with ln sigma ~ N(P_mean, P_std^2) and lambda = (sigma^2 + sigma_data^2) / (sigma
    sigma_data)^2, for any SDE through sigma = std / alpha and D = (x_t + std^2 s) / alpha.

    sigma is mapped to t by the SDE's inverse log-SNR and clipped to [eps, sde.sampling_T] (the
    SDE's noise range); lambda uses the sigma of the clipped t. With prediction="edm" lambda
    c_out^2 = 1: the network's F regresses with unit weight (EDM's Eq. 8).
    """
    if t is None:
        gen_device = generator.device if generator is not None else x.device
        n = torch.randn((x.shape[0],), generator=generator, device=gen_device, dtype=torch.float64)
        lam = -2.0 * (P_mean + P_std * n.cpu())  # log-SNR = -2 ln sigma
        t = sde.t_from_log_snr(lam).clamp(eps, sde.sampling_T).to(device=x.device, dtype=x.dtype)
    z = randn_like(x, generator)
    alpha, std = sde.marginal_coeffs(t.to(x.dtype))  # (B,)
    a, s = append_dims(alpha, x.ndim), append_dims(std, x.ndim)
    x_t = a * x + s * z
    denoised = (x_t + s**2 * score_fn(x_t, t).to(x.dtype)) / a  # Tweedie, (B, ...)
    sigma = std / alpha
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # (B,)
    return _reduce((denoised - x) ** 2, reduce_mean) * weight


def classifier_loss(sde, classifier_fn, x, *, generator=None, eps=1e-5, t=None) -> torch.Tensor:
    """Cross-entropy of a noise-conditional classifier on x_t ~ p_0t(x_t | x) = N(alpha x,
    std^2 I), t ~ U(eps, T) (the classifier of Song et al. 2021, Eq. 14), (B,): -log p_t(y | x_t)
    with `classifier_fn(x_t, t) -> (B,)` the log-probability of each example's label
    (`sde.models.get_classifier_fn` with the labels)."""
    if t is None:
        t = _uniform((x.shape[0],), generator, x.device, eps, sde.T)
    z = randn_like(x, generator)
    alpha, std = sde.marginal_coeffs(t.to(x.dtype))
    return -classifier_fn(_perturb(x, alpha, std, z), t)


def gaussian_dsm_constant(sde, data_std: float, t: torch.Tensor) -> torch.Tensor:
    """Per-dimension sigma^2-weighted DSM loss of the exact score for data N(0, data_std^2 I):
    alpha^2 s^2 / (alpha^2 s^2 + std^2) at each t (its irreducible value)."""
    alpha, std = sde.marginal_coeffs(t)
    signal = alpha**2 * data_std**2
    return signal / (signal + std**2)


__all__ = ["dsm_loss", "ddpm_loss", "smld_loss", "edm_loss", "classifier_loss", "importance_times",
           "gaussian_dsm_constant"]
