"""Controllable generation with an unconditional score: inpainting, colorization and linear inverse
problems (Song et al. 2021, App. I), RePaint resampling (Lugmayr et al. 2022), diffusion posterior
sampling (Chung et al. 2023), a sequential Monte Carlo sampler that is exact as the number of
particles grows (after MCGdiff, Cardoso et al. 2024), and classifier(-free) guidance.

Every method walks score_sde's grid linspace(T, eps, N) with the predictors and correctors of
`sde.sampling` (any pair, any SDE), and returns `(x, nfe)` with `nfe` the number of `score_fn`
calls. Inpainting returns `x` equal to `y` bit for bit where `mask` is 1.
"""

from __future__ import annotations

import math

import torch

from sde.sampling.correctors import get_corrector
from sde.sampling.pc import check_chain
from sde.sampling.predictors import NonePredictor, get_predictor
from sde.utils import CountedScore, append_dims, batch_time, check_eps, lookup, randn, randn_like


# --- shared pieces ----------------------------------------------------------------------------
def _grid(sde, eps: float) -> list[float]:
    """score_sde's time grid linspace(T, eps, N), as Python floats; where alpha(T) = 0 it starts
    below T, at `sde.sampling_T`, as `pc_sample` does."""
    t = torch.linspace(sde.T, eps, sde.N, dtype=torch.float64)
    return t[t <= sde.sampling_T].tolist()


def _steppers(sde, score_fn, predictor, corrector, snr, n_steps, eps, corrector_options=None):
    """The predictor and corrector objects of `sde.sampling`, by name, checked on the grid (a VP
    chain with N <= beta_max is refused before any step, as in `pc_sample`)."""
    predictor_obj = get_predictor(predictor)(sde, score_fn, False)
    corrector_obj = get_corrector(corrector)(sde, score_fn, snr, n_steps, **(corrector_options or {}))
    _check_grid(sde, predictor_obj, corrector_obj, eps)
    return predictor_obj, corrector_obj


def _check_grid(sde, predictor_obj, corrector_obj, eps: float) -> None:
    grid = torch.tensor(_grid(sde, eps), dtype=torch.float64)
    check_chain(sde, predictor_obj, corrector_obj, grid, what="inpaint / colorize / dps")


def _replace(sde, x, x_mean, y, known, t, generator):
    """Replacement (Song et al. 2021, App. I): known entries <- a fresh draw of p_0t(. | y).

    x_mean gets the unknown part of the step's own noise-free mean; score_sde's version keeps the
    noisy x there (`x_mean = x * (1 - mask) + ...`), so its `denoise` does not denoise.
    """
    y_mean, std = sde.marginal_prob(y, t)
    y_t = y_mean + append_dims(std, y.ndim) * randn_like(y, generator)
    return torch.where(known, y_t, x), torch.where(known, y_mean, x_mean)


def _start(sde, y, known, generator):
    """x_T: the known entries of y, prior noise elsewhere (score_sde's initial sample)."""
    prior = sde.prior_sampling(y.shape, generator, device=y.device, dtype=y.dtype)
    return torch.where(known, y, prior)


def _renoise(sde, x, s: float, t: float, generator):
    """One forward jump x_s -> x_t (s < t) of the SDE's kernel: N(a x_s, (std_t^2 - a^2 std_s^2) I),
    a = alpha(t) / alpha(s) (the resampling step of RePaint, Lugmayr et al. 2022, Alg. 1)."""
    alpha, std = sde.marginal_coeffs(torch.tensor([s, t], dtype=torch.float64))
    a = (alpha[1] / alpha[0]).item()
    var = max((std[1] ** 2 - a**2 * std[0] ** 2).item(), 0.0)
    return a * x + math.sqrt(var) * randn_like(x, generator)


# --- the inpainting methods: each returns (x, x_mean) of the last step -------------------------
def _replacement(sde, score_fn, y, known, *, predictor, corrector, snr, n_steps, eps, generator,
                 resample=1, corrector_options=None):
    """score_sde's PC inpainter (Song et al. 2021, App. I, `get_pc_inpainter`): after every
    corrector and predictor step the known part is replaced by a draw of p_0t(. | y). With
    `resample` = r > 1, RePaint's resampling: r passes per step, each but the last followed by a
    forward jump back to the step's start (Lugmayr et al. 2022, Alg. 1, jump length 1)."""
    predictor_obj, corrector_obj = _steppers(sde, score_fn, predictor, corrector, snr, n_steps,
                                             eps, corrector_options)
    x = _start(sde, y, known, generator)  # (B, ...)
    x_mean = x
    grid = _grid(sde, eps)
    for i, t in enumerate(grid):
        vec_t = batch_time(t, y)
        passes = resample if i + 1 < len(grid) else 1
        for r in range(passes):
            for step in (corrector_obj, predictor_obj):
                x, x_mean = step.update_fn(x, vec_t, generator)
                x, x_mean = _replace(sde, x, x_mean, y, known, vec_t, generator)
            if r + 1 < passes:
                x = _renoise(sde, x, grid[i + 1], t, generator)
    return x, x_mean


def _repaint(sde, score_fn, y, known, *, resample=10, **kwargs):
    """RePaint (Lugmayr et al. 2022): replacement with `resample` passes per step (default 10)."""
    if int(resample) != resample or resample < 1:
        raise ValueError(f"resample must be an integer >= 1, got {resample}")
    return _replacement(sde, score_fn, y, known, resample=int(resample), **kwargs)


class _ReuseScore:
    """A score_fn that returns the score already computed at (x, t) by the DPS gradient pass, so
    that the predictor step that follows costs no second network call."""

    def __init__(self, score_fn):
        self.score_fn, self.cached = score_fn, None

    def __call__(self, x, t):
        if self.cached is not None and self.cached[0] is x and torch.equal(self.cached[1], t):
            return self.cached[2]
        return self.score_fn(x, t)


def _dps_gradient(sde, score_fn, x, t, y, operator):
    """Score at x, grad_x |y - A x0_hat(x)|^2 and |y - A x0_hat| (B,), with the Tweedie
    denoiser x0_hat = (x + std^2 score) / alpha (Chung et al. 2023, Alg. 1)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        score = score_fn(x_in, t)
        alpha, std = sde.marginal_coeffs(t)
        x0 = (x_in + append_dims(std**2, x.ndim) * score) / append_dims(alpha, x.ndim)
        norm = (y - operator(x0)).flatten(1).norm(dim=1)  # (B,)
        (grad,) = torch.autograd.grad((norm**2).sum(), x_in)
    return score.detach(), grad, norm.detach()


def _dps(sde, score_fn, shape, y, operator, *, predictor, corrector, snr, n_steps, eps,
         generator, zeta=1.0, corrector_options=None):
    """Diffusion posterior sampling (Chung et al. 2023, Alg. 1) on any predictor x corrector:
    after each predictor step, x <- x - zeta_i grad_x |y - A x0_hat(x_t)|^2 with
    zeta_i = zeta / |y - A x0_hat|."""
    reuse = _ReuseScore(score_fn)
    predictor_obj, _ = _steppers(sde, reuse, predictor, "none", snr, n_steps, eps)
    _, corrector_obj = _steppers(sde, score_fn, "none", corrector, snr, n_steps, eps,
                                 corrector_options)
    x = sde.prior_sampling(shape, generator, device=y.device, dtype=y.dtype)  # (B, ...)
    x_mean = x
    for t in _grid(sde, eps):
        vec_t = batch_time(t, x)
        x, x_mean = corrector_obj.update_fn(x, vec_t, generator)
        score, grad, norm = _dps_gradient(sde, score_fn, x, vec_t, y, operator)
        reuse.cached = (x, vec_t, score)
        x, x_mean = predictor_obj.update_fn(x, vec_t, generator)
        step = append_dims(zeta / norm.clamp_min(torch.finfo(norm.dtype).tiny), x.ndim) * grad
        x, x_mean = x - step, x_mean - step
    return x, x_mean


def _dps_inpaint(sde, score_fn, y, known, **kwargs):
    """DPS with the masking operator A x = mask * x."""
    mask = known.to(y.dtype)
    return _dps(sde, score_fn, y.shape, y * mask, lambda x: x * mask, **kwargs)


class _UnitNoise:
    """A stand-in generator whose every normal draw is 1: a predictor step with it returns
    x_mean + G, which gives the Gaussian kernel's std G without a second score call."""

    def randn(self, shape, *, device=None, dtype=None):
        return torch.ones(shape, device=device, dtype=dtype)


def _log_normal(x, mean, var):
    """Entrywise log N(x; mean, var) in float64."""
    x, mean, var = x.double(), mean.double(), var.double()
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def _uniform(n: int, generator, device) -> torch.Tensor:
    """n uniforms in (0, 1) (float64) from any generator of `sde.utils.randn`."""
    return torch.special.ndtr(randn((n,), generator, device=device, dtype=torch.float64))


def _systematic(log_w, generator) -> torch.Tensor:
    """Systematic resampling indices (B, K) from log-weights (B, K) (Douc et al. 2005)."""
    b, k = log_w.shape
    cdf = torch.cumsum(torch.softmax(log_w, dim=1), dim=1)
    u = (_uniform(b, generator, log_w.device)[:, None] + torch.arange(k, device=log_w.device)) / k
    return torch.searchsorted(cdf, u).clamp_max(k - 1)


def _gather(x, idx):
    """Particles x (B*K, ...) reordered within each group by idx (B, K')."""
    b, k = idx.shape[0], x.shape[0] // idx.shape[0]
    rows = (idx + k * torch.arange(b, device=idx.device)[:, None]).reshape(-1)
    return x[rows]


def _smc_step(sde, predictor_obj, x, y, known, t, t_next, generator):
    """One guided particle move: the predictor's Gaussian kernel N(m, G^2) times the potential
    g(x') = N(x'[known]; alpha y, std^2) at t_next (or the point mass at y when t_next is None).
    Returns the particles, their noise-free means and log Z(x) - the log normaliser (B*K,)."""
    x_plus, m = predictor_obj.update_fn(x, t, _UnitNoise())
    var = ((x_plus - m) ** 2).clamp_min(1e-20)  # G^2, shaped like x
    z = randn_like(x, generator)
    if t_next is None:  # the last step: known entries are y exactly
        log_z = _log_normal(y, m, var)
        obs_mean, obs_std = y, torch.zeros_like(y)
    else:
        alpha, std = sde.marginal_coeffs(t_next)
        target, s2 = append_dims(alpha, y.ndim) * y, append_dims(std**2, y.ndim)
        log_z = _log_normal(m, target, var + s2)
        v = 1.0 / (1.0 / var + 1.0 / s2)
        obs_mean, obs_std = v * (m / var + target / s2), torch.sqrt(v)
    x_new = torch.where(known, obs_mean + obs_std * z, m + torch.sqrt(var) * z)
    log_z = torch.where(known, log_z, 0.0).flatten(1).sum(1)
    return x_new, torch.where(known, obs_mean, m), log_z


def _potential(sde, x, y, known, t):
    """log g_t(x) = log N(x[known]; alpha(t) y, std(t)^2) (B*K,)."""
    alpha, std = sde.marginal_coeffs(t)
    log_g = _log_normal(x, append_dims(alpha, y.ndim) * y, append_dims(std**2, y.ndim))
    return torch.where(known, log_g, 0.0).flatten(1).sum(1)


def _smc(sde, score_fn, y, known, *, predictor, corrector, snr, n_steps, eps, generator,
         particles=16, ess_threshold=1.0):
    """Sequential Monte Carlo for noiseless inpainting (after MCGdiff, Cardoso et al. 2024): K
    particles per example follow the predictor's Gaussian kernel, guided on the known entries by
    the potential g_t = N(x[known]; alpha(t) y, std(t)^2), with weights Z(x) / g_t(x) and
    systematic resampling of each example's particles when their effective sample size drops
    below `ess_threshold` K (default 1: every step, as MCGdiff); the last step lands on y.
    As K grows the output is a draw of the model's p(x | x_known = y)."""
    if corrector != "none":
        raise ValueError(f"method='smc' needs the predictor's Gaussian kernel alone; pass "
                         f"corrector='none' (got {corrector!r})")
    if int(particles) != particles or particles < 1:
        raise ValueError(f"particles must be an integer >= 1, got {particles}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError("method='smc' draws K particles per example: pass a torch.Generator "
                         "(per-example generators cannot seed the particles)")
    predictor_obj = get_predictor(predictor)(sde, score_fn, False)
    if isinstance(predictor_obj, NonePredictor):
        raise ValueError("method='smc' needs a stochastic predictor, not 'none'")
    _check_grid(sde, predictor_obj, None, eps)
    b, k = y.shape[0], int(particles)
    y_k, known_k = y.repeat_interleave(k, 0), known.repeat_interleave(k, 0)  # (B*K, ...)
    x = sde.prior_sampling(y_k.shape, generator, device=y.device, dtype=y.dtype)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=y.device)
    log_g = torch.zeros(b * k, dtype=torch.float64, device=y.device)
    grid = _grid(sde, eps)
    for i, t in enumerate(grid):
        t_next = batch_time(grid[i + 1], y_k) if i + 1 < len(grid) else None
        x, x_mean, log_z = _smc_step(sde, predictor_obj, x, y_k, known_k, batch_time(t, y_k),
                                     t_next, generator)
        log_w = log_w + (log_z - log_g).reshape(b, k)
        if t_next is None:
            break
        log_g = _potential(sde, x, y_k, known_k, t_next)
        low = 1.0 / (torch.softmax(log_w, dim=1) ** 2).sum(1) < ess_threshold * k  # (B,)
        if low.any():  # resample the groups whose effective sample size is low
            keep = torch.arange(k, device=y.device).expand(b, k)
            idx = torch.where(low[:, None], _systematic(log_w, generator), keep)
            x, x_mean, log_g = _gather(x, idx), _gather(x_mean, idx), _gather(log_g, idx)
            log_w = torch.where(low[:, None], 0.0, log_w)
    pick = torch.searchsorted(torch.cumsum(torch.softmax(log_w, 1), 1),
                              _uniform(b, generator, y.device)[:, None]).clamp_max(k - 1)
    return _gather(x, pick), _gather(x_mean, pick)


METHODS = {"replacement": _replacement, "repaint": _repaint, "dps": _dps_inpaint, "smc": _smc}
OPTIONS = {  # extra keyword arguments each method takes
    "replacement": {"corrector_options"},
    "repaint": {"resample", "corrector_options"},
    "dps": {"zeta", "corrector_options"},
    "smc": {"particles", "ess_threshold"},
}


# --- public functions -------------------------------------------------------------------------
def _check_mask(y, mask) -> torch.Tensor:
    """mask as a bool tensor shaped like y, or a ValueError saying what is wrong."""
    if not torch.is_tensor(y) or not y.is_floating_point():
        raise ValueError("y must be a floating-point tensor (B, ...) in model space")
    mask = torch.as_tensor(mask, device=y.device)
    if mask.shape != y.shape:
        raise ValueError(f"mask must have y's shape {tuple(y.shape)}, got {tuple(mask.shape)}; "
                         f"expand it with mask.expand_as(y)")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 (unknown) and 1 (known)")
    return mask.bool()


def _check_options(method: str, options: dict) -> None:
    unknown = set(options) - OPTIONS[method]
    if unknown:
        raise ValueError(f"method={method!r} takes no option {', '.join(sorted(unknown))}; its "
                         f"options: {', '.join(sorted(OPTIONS[method])) or 'none'}")


@torch.no_grad()
def inpaint(sde, score_fn, y, mask, *, method="replacement", predictor="reverse_diffusion",
            corrector="langevin", snr=0.16, n_steps=1, denoise=True, eps=1e-3, generator=None,
            **options):
    """Inpainting: a draw of x given its entries y where mask is 1 -> (x, nfe).

    `method`: "replacement" (Song et al. 2021, App. I), "repaint" (option `resample`, default
    10), "dps" (option `zeta`, default 1) or "smc" (options `particles`, default 16, and
    `ess_threshold`; corrector must be "none"). `denoise` returns the last step's noise-free
    mean. The returned x equals y exactly where mask is 1.
    """
    check_eps(sde, eps)
    known = _check_mask(y, mask)
    method_fn = lookup(METHODS, method, "inpainting method")
    _check_options(method, options)
    counted = CountedScore(score_fn)
    x, x_mean = method_fn(sde, counted, y, known, predictor=predictor, corrector=corrector,
                          snr=snr, n_steps=n_steps, eps=eps, generator=generator, **options)
    out = torch.where(known, y, x_mean if denoise else x)
    counted.check(out, what=f"inpaint (method={method!r})")
    return out, counted.nfe


def _colour_basis(like: torch.Tensor) -> torch.Tensor:
    """score_sde's orthonormal colour basis M (3, 3): column 0 is (1, 1, 1) / sqrt(3), so the
    first decoupled channel is sqrt(3) x the grey level and the other two carry no grey."""
    r3, r6, r2 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(2.0)
    m = [[1 / r3, -2 / r6, 0.0], [1 / r3, 1 / r6, 1 / r2], [1 / r3, 1 / r6, -1 / r2]]
    return torch.tensor(m, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def decouple(x: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, ...) -> decoupled channels M^T x (score_sde's `decouple`)."""
    return torch.einsum("bi...,ij->bj...", x, _colour_basis(x))


def couple(z: torch.Tensor) -> torch.Tensor:
    """Decoupled channels (B, 3, ...) -> RGB M z, the inverse of `decouple`."""
    return torch.einsum("bj...,ij->bi...", z, _colour_basis(z))


@torch.no_grad()
def colorize(sde, score_fn, gray, *, method="replacement", **kwargs):
    """Colorization (Song et al. 2021, App. I): gray (B, 1, ...) -> x (B, 3, ...) with
    x.mean(1, keepdim=True) == gray (to the rounding of x's channels), as inpainting of the
    grey channel in score_sde's decoupled orthonormal colour space (the SDEs are isotropic, so
    the latent follows the same SDE with score M^T score(M z)). Takes every argument of
    `inpaint`; returns (x, nfe)."""
    if not torch.is_tensor(gray) or gray.ndim < 2 or gray.shape[1] != 1:
        raise ValueError(f"gray must be (B, 1, H, W), got "
                         f"{tuple(gray.shape) if torch.is_tensor(gray) else type(gray).__name__}")
    shape = (gray.shape[0], 3, *gray.shape[2:])
    z_known = torch.cat([math.sqrt(3.0) * gray, gray.new_zeros(shape[0], 2, *shape[2:])], dim=1)
    mask = torch.zeros(shape, dtype=torch.bool, device=gray.device)
    mask[:, :1] = True
    latent_score = lambda z, t: decouple(score_fn(couple(z), t))  # noqa: E731
    z, nfe = inpaint(sde, latent_score, z_known, mask, method=method, **kwargs)
    return couple(z.double()).to(gray.dtype), nfe  # in float64: rounds the grey level once


@torch.no_grad()
def dps_sample(sde, score_fn, y, operator, shape, *, zeta=1.0, predictor="reverse_diffusion",
               corrector="langevin", snr=0.16, n_steps=1, denoise=True, eps=1e-3,
               generator=None, corrector_options=None):
    """DPS (Chung et al. 2023, Alg. 1) for a linear measurement y = A x + noise -> (x, nfe).

    `operator` is a matrix A (M, D) acting on flattened examples, or any differentiable callable
    x (B, ...) -> (B, ...) shaped like y; `shape` is the shape of x (B, ...)."""
    check_eps(sde, eps)
    if not callable(operator):
        matrix = torch.as_tensor(operator, dtype=y.dtype, device=y.device)
        operator = lambda x: x.flatten(1) @ matrix.T  # noqa: E731
    counted = CountedScore(score_fn)
    x, x_mean = _dps(sde, counted, tuple(shape), y, operator, predictor=predictor,
                     corrector=corrector, snr=snr, n_steps=n_steps, eps=eps, generator=generator,
                     zeta=zeta, corrector_options=corrector_options)
    out = x_mean if denoise else x
    counted.check(out, what="dps_sample")
    return out, counted.nfe


def guided_score(cond_score_fn, uncond_score_fn, guidance):
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): s = (1 + w) s_cond - w s_uncond;
    `guidance` w is a float or a (B,) tensor; w = 0 is the conditional score."""
    def score_fn(x, t):
        w = guidance if not torch.is_tensor(guidance) else append_dims(guidance.to(x), x.ndim)
        return (1 + w) * cond_score_fn(x, t) - w * uncond_score_fn(x, t)
    return score_fn


def classifier_guided_score(score_fn, log_likelihood_fn, guidance=1.0):
    """Classifier guidance (Song et al. 2021, Eq. 14; Dhariwal & Nichol 2021): s = score +
    w grad_x log p_t(y | x), with `log_likelihood_fn(x, t) -> (B,)` a noisy classifier's
    log-probability of the wanted labels; w = 1 is the exact conditional score."""
    def guided(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_likelihood_fn(x_in, t).sum(), x_in)
        return score_fn(x, t) + guidance * grad
    return guided


def _linear_move(H, sigma_y, m, g2, y):
    """Kernel N(m, g2 I) (m (P, D)) times the Gaussian potential N(y; H x, sigma_y) (y (P, M)):
    the proposal's mean (P, D), a square root of its shared covariance (D, D), and log Z (P,)
    with Z = N(y; H m, sigma_y + g2 H H^T) (Woodbury form: only M x M solves)."""
    S = sigma_y + g2 * H @ H.T  # (M, M)
    residual = y - m @ H.T  # (P, M)
    gain = g2 * torch.linalg.solve(S, H).T  # g2 H^T S^-1 (D, M)
    cov = g2 * torch.eye(H.shape[1], dtype=H.dtype, device=H.device) - gain @ H * g2
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    root = eigvecs * eigvals.clamp_min(0.0).sqrt()  # cov = root root^T
    log_z = torch.distributions.MultivariateNormal(torch.zeros_like(residual[0]), S).log_prob(
        residual)
    return m + residual @ gain.T, root, log_z


def _linear_potential(sde, A, noise_std, t):
    """The potential g_t(x_t) = N(y; A x_t / alpha, s^2 I + (std / alpha)^2 A A^T) as (H, sigma_y):
    the measurement of x0 ~ x_t / alpha with the kernel's noise; the likelihood itself at t = 0."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    if t is None:
        return A, noise_std**2 * eye
    alpha, std = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    return A / alpha, noise_std**2 * eye + (std / alpha) ** 2 * A @ A.T


@torch.no_grad()
def smc_linear_inverse(sde, score_fn, y, A, shape, *, noise_std=0.0, particles=16,
                       predictor="reverse_diffusion", ess_threshold=1.0, denoise=True, eps=1e-3,
                       generator=None):
    """SMC for a linear measurement y = A x + N(0, noise_std^2 I) -> (x, nfe): the particle
    sampler of `method="smc"` with the Gaussian potentials N(y; A x_t / alpha, s^2 I +
    (std / alpha)^2 A A^T) (closed-form guided moves; the last one is the likelihood itself), so
    that as K grows the output is a draw of the model's p(x | y). A is (M, D) on flattened
    examples of `shape` (B, ...); y is (B, M). Needs D x D eigendecompositions per step (toy
    and small data); noise_std = 0 needs A A^T invertible."""
    check_eps(sde, eps)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError("smc_linear_inverse draws K particles per example: pass a torch.Generator")
    b, k = shape[0], int(particles)
    A = torch.as_tensor(A, dtype=torch.float64, device=y.device)
    y_k = y.to(torch.float64).repeat_interleave(k, 0)  # (B*K, M)
    counted = CountedScore(score_fn)
    predictor_obj = get_predictor(predictor)(sde, counted, False)
    _check_grid(sde, predictor_obj, None, eps)
    x = sde.prior_sampling((b * k, *shape[1:]), generator, device=y.device, dtype=y.dtype)
    log_w = torch.zeros(b, k, dtype=torch.float64, device=y.device)
    log_g = torch.zeros(b * k, dtype=torch.float64, device=y.device)
    grid = _grid(sde, eps)
    for i, t in enumerate(grid):
        t_next = grid[i + 1] if i + 1 < len(grid) else None
        x_plus, m = predictor_obj.update_fn(x, batch_time(t, x), _UnitNoise())
        counted.check(what="smc_linear_inverse")  # before NaN reaches the Gaussians' checks
        g2 = ((x_plus - m).flatten()[0].double() ** 2).clamp_min(1e-20)  # the kernel's G^2
        H, sigma_y = _linear_potential(sde, A, noise_std, t_next)
        mean, root, log_z = _linear_move(H, sigma_y, m.flatten(1).double(), g2, y_k)
        z = randn((b * k, mean.shape[1]), generator, device=y.device, dtype=torch.float64)
        x = (mean + z @ root.T).to(y.dtype).reshape(x.shape)
        x_mean = mean.to(y.dtype).reshape(x.shape)
        log_w = log_w + (log_z - log_g).reshape(b, k)
        if t_next is None:
            break
        log_g = torch.distributions.MultivariateNormal(torch.zeros_like(y_k[0]), sigma_y).log_prob(
            y_k - x.flatten(1).double() @ H.T)
        low = 1.0 / (torch.softmax(log_w, dim=1) ** 2).sum(1) < ess_threshold * k  # (B,)
        if low.any():
            keep = torch.arange(k, device=y.device).expand(b, k)
            idx = torch.where(low[:, None], _systematic(log_w, generator), keep)
            x, log_g = _gather(x, idx), _gather(log_g, idx)
            log_w = torch.where(low[:, None], 0.0, log_w)
    pick = torch.searchsorted(torch.cumsum(torch.softmax(log_w, 1), 1),
                              _uniform(b, generator, y.device)[:, None]).clamp_max(k - 1)
    out = _gather(x_mean if denoise else x, pick)
    counted.check(out, what="smc_linear_inverse")
    return out, counted.nfe
