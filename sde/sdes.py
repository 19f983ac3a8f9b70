"""Forward SDEs of Song et al. (ICLR 2021), their reverse-time SDEs and probability-flow ODEs.

Conventions (see the README): time runs over [0, T] with T = 1; data at t = 0, prior at T.
Every SDE here is linear, so its perturbation kernel is Gaussian,
p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, std(t)^2 I), and `marginal_coeffs(t)` returns
(alpha(t), std(t)). All methods keep the dtype and device of their inputs: buffers are stored
in float64 and cast to the input's dtype on use.
"""

from __future__ import annotations

import abc
import math
import warnings

import numpy as np
import torch

from sde.utils import append_dims, flat_dim, randn


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


class SDE(abc.ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T] (Eq. 5 of Song et al. 2021)."""

    T: float = 1.0
    #: The discrete chain at N noise levels, "ddpm" or "smld"; None where there is none.
    chain: str | None = None
    #: Log-SNR where sampling starts when alpha(T) = 0 (see `sampling_T`): -10, about the linear
    #: VP's own lambda(T) = -10.05, so a zero-SNR schedule starts as close to pure noise.
    min_log_snr: float = -10.0

    def __init__(self, N: int):
        _check(isinstance(N, (int, np.integer)) and N >= 1, f"N must be an integer >= 1, got {N!r}")
        self.N = int(N)
        self._cache: dict = {}

    # --- what each SDE defines -------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) shaped like x and diffusion g(t) shaped (B,)."""

    @abc.abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), std(t)), each (B,): the kernel p_0t(x_t | x_0) = N(alpha x_0, std^2 I)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T."""

    # --- derived from the above ------------------------------------------------------------
    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha(t) x (shaped like x) and std(t) (B,) of the perturbation kernel p_0t(x_t | x)."""
        alpha, std = self.marginal_coeffs(t.to(x.dtype))
        return append_dims(alpha, x.ndim) * x, std

    def prior_sampling(self, shape, generator=None, *, device=None, dtype=None) -> torch.Tensor:
        """A sample x_T ~ N(0, prior_std^2 I) of the given shape."""
        return randn(shape, generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) in nats, (B,)."""
        d, s2 = flat_dim(z), self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - z.flatten(1).pow(2).sum(1) / (2 * s2)

    def score_sde_std(self, t: torch.Tensor) -> torch.Tensor:
        """std(t) computed the way score_sde_pytorch computes it, in t's dtype (B,); differs from
        `marginal_coeffs` only by that codebase's rounding. Used to reproduce converted
        checkpoints' scores bit for bit (`get_score_fn(..., std="score_sde")`)."""
        return self.marginal_coeffs(t)[1]

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """Log signal-to-noise ratio lambda(t) = log(alpha(t)^2 / std(t)^2), (B,); decreasing in t."""
        alpha, std = self.marginal_coeffs(t)
        return 2 * (torch.log(alpha) - torch.log(std))

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of `log_snr`, by bisection on [0, T] in float64 (subclasses give closed forms)."""
        lam64 = lam.detach().to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.full_like(lam64, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam64  # log-SNR still too high: t must grow
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step x_{i+1} = x_i + f_i + G_i z; Euler-Maruyama with dt = T / N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    @property
    def sampling_T(self) -> float:
        """Time where every sampler starts and the likelihood's ODE ends: T when alpha(T) > 0.

        Where alpha(T) = 0 (CosineVPSDE, VPSDE(zero_terminal_snr=True)) the drift is singular at
        T and a score gives no denoiser there (E[x_0 | x_T] = E[x_0] is not in the score), so
        it is the time of log-SNR `min_log_snr` instead, just below T: x ~ N(0, I) there is off
        p_t by alpha^2 = 4.5e-5 in variance, as for the linear VP at T.
        """
        if "sampling_T" not in self._cache:
            alpha_T = self.marginal_coeffs(torch.tensor([self.T], dtype=torch.float64))[0]
            lam = torch.tensor([self.min_log_snr], dtype=torch.float64)
            t = self.T if alpha_T.item() > 0 else min(self.t_from_log_snr(lam).item(), self.T)
            self._cache["sampling_T"] = float(t)
        return self._cache["sampling_T"]

    def discrete_marginal(self, i: torch.Tensor, like: torch.Tensor, *, chain: str | None = None):
        """(alpha_i, std_i), each (B,) in `like`'s dtype: the discrete chain's kernel x_i =
        alpha_i x_0 + std_i z at indices i (B,) (DDPM: sqrt(abar_i), sqrt(1 - abar_i); SMLD:
        1, sigma_i). `chain`, if given ("ddpm" or "smld"), must be this SDE's; a ValueError
        names the SDE and the fix where it has no such chain."""
        if self.chain is None or chain not in (None, self.chain):
            has = {"ddpm": "VPSDE and CosineVPSDE have one", "smld": "VESDE has one"}
            wanted = f"{chain.upper()} chain ({has[chain]})" if chain in has else "discrete chain"
            raise ValueError(
                f"{type(self).__name__} has no {wanted}: use a continuous-time loss and time "
                f"input with it (loss=dsm, score.time_input=t or sigma), or an SDE with that chain")
        return self._chain_marginal(i, like)

    def _chain_marginal(self, i, like):
        raise NotImplementedError

    def ancestral_step(self, x, t, score) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and noise std (B,) of one ancestral step from t; only for the discrete chains."""
        raise ValueError(
            f"ancestral sampling is defined for VPSDE (the DDPM chain) and VESDE (the SMLD chain), "
            f"not {type(self).__name__}; use predictor='reverse_diffusion' or 'euler_maruyama'"
        )

    def langevin_scale(self, t: torch.Tensor) -> torch.Tensor:
        """Factor alpha_i on the Langevin step size (Algorithms 4-5 of Song et al. 2021), (B,)."""
        return torch.ones_like(t)

    def reverse(self, score_fn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Eq. 6), or with `probability_flow` the probability-flow ODE (Eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow)

    # --- helpers for the discrete chains ---------------------------------------------------
    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Index i in [0, N-1] of continuous time t on the grid i * T / (N - 1), as score_sde does
        (floor, with a small tolerance against rounding error)."""
        i = torch.floor(t.detach() * (self.N - 1) / self.T + 1e-4).long()
        return i.clamp_(0, self.N - 1)

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The float64 buffer `name`, cast to `like`'s dtype and device (cached)."""
        key = (name, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"

    def hparams(self) -> dict:
        return {"N": self.N}


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw_bar (Eq. 6 of Song et al. 2021), or the
    probability-flow ODE dx = [f - g^2 score / 2] dt (Eq. 13) when `probability_flow` is set.

    `sde(x, t)` returns the drift and diffusion to be integrated backwards in time (dt < 0), and
    `discretize(x, t)` the reverse of the forward chain, x_i = x_{i+1} - f_rev + G_rev z
    (Eq. 46, "reverse diffusion").
    """

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.N, self.T = forward.N, forward.T

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drift, diffusion = self.forward.sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - append_dims(diffusion**2, x.ndim) * self.score_fn(x, t) * weight
        return drift, (torch.zeros_like(diffusion) if self.probability_flow else diffusion)

    def discretize(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, G = self.forward.discretize(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - append_dims(G**2, x.ndim) * self.score_fn(x, t) * weight
        return rev_f, (torch.zeros_like(G) if self.probability_flow else G)


class _LinearBetaSDE(SDE):
    """Shared part of VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        _check(beta_min >= 0, f"beta_min must be >= 0, got {beta_min}")
        _check(beta_max > beta_min, f"beta_max must be > beta_min, got {beta_max} <= {beta_min}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        # DDPM's discrete betas: beta_i = beta_bar_i / N with beta_bar on a linear grid (Eq. 7).
        self.discrete_betas = torch.linspace(
            self.beta_min / self.N, self.beta_max / self.N, self.N, dtype=torch.float64
        )
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2 (Eq. 29)."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    @staticmethod
    def _std(one_minus_alpha2: torch.Tensor) -> torch.Tensor:
        """std(t) from 1 - alpha(t)^2: sqrt for VP, the identity for sub-VP."""
        raise NotImplementedError

    def marginal_coeffs(self, t):
        log_alpha = self.log_mean_coeff(t)
        return torch.exp(log_alpha), self._std(-torch.expm1(2.0 * log_alpha))

    def score_sde_std(self, t):
        """score_sde's `1 - exp(2 log_mean_coeff)`: loses ~1e-4 relative accuracy at t = 1e-3 in
        float32, where `marginal_coeffs` (expm1) stays exact."""
        return self._std(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    @property
    def prior_std(self) -> float:
        return 1.0

    def langevin_scale(self, t: torch.Tensor) -> torch.Tensor:
        self._check_chain()
        return self._buffer("alphas", t)[self.timestep(t)]

    def _check_chain(self) -> None:
        """Warn (once) when the discrete chain's betas beta_max / N, probabilities, reach 1."""
        if self.beta_max / self.N >= 1 and not self._cache.get("warned_chain"):
            self._cache["warned_chain"] = True
            warnings.warn(
                f"the discrete chain needs N > beta_max (its betas are beta_max / N = "
                f"{self.beta_max / self.N:g} >= 1 here): expect NaN; use N > {self.beta_max:g} "
                f"or a continuous-time sampler (predictor='euler_maruyama', corrector='none', ODE)",
                stacklevel=3)

    def hparams(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "N": self.N}


class _DDPMChain:
    """The DDPM chain of a VP-type SDE with discrete betas beta_i: x_{i+1} = sqrt(1 - beta_i) x_i
    + sqrt(beta_i) z, abar_i = prod_{j <= i} (1 - beta_j) (Ho et al. 2020). Mixed in before SDE."""

    chain = "ddpm"

    def _set_chain(self, betas: torch.Tensor) -> None:
        """Store the float64 betas (N,), their alphas and cumulative products."""
        self.discrete_betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._cache.clear()

    def _chain_marginal(self, i, like):
        abar = self._buffer("alphas_cumprod", like)[i]  # (B,)
        return torch.sqrt(abar), torch.sqrt(1.0 - abar)

    def discretize(self, x, t):
        """The DDPM chain x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Eq. 8)."""
        self._check_chain()
        i = self.timestep(t)
        beta = self._buffer("discrete_betas", x)[i]
        alpha = self._buffer("alphas", x)[i]
        return (append_dims(torch.sqrt(alpha), x.ndim) - 1.0) * x, torch.sqrt(beta)

    def ancestral_step(self, x, t, score):
        """Algorithm 2 of Ho et al. (2020) with sigma_i^2 = beta_i and eps = -std * score (Eq. 47)."""
        self._check_chain()
        i = self.timestep(t)
        beta = self._buffer("discrete_betas", x)[i]
        x_mean = (x + append_dims(beta, x.ndim) * score) / append_dims(torch.sqrt(1.0 - beta), x.ndim)
        return x_mean, torch.sqrt(beta)

    def langevin_scale(self, t):
        self._check_chain()
        return self._buffer("alphas", t)[self.timestep(t)]

    @property
    def prior_std(self) -> float:
        return 1.0


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Lin et al. (2024): shift sqrt(abar) so that its last value is 0 and scale it
    so that its first is unchanged; the betas (N,) of that chain (the last one is 1)."""
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0], sqrt_abar[-1]
    abar = ((sqrt_abar - last) * first / (first - last)) ** 2
    return 1.0 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


class VPSDE(_DDPMChain, _LinearBetaSDE):
    """Variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (Eq. 11); DDPM at N = 1000.

    `zero_terminal_snr` (Lin et al. 2024, Algorithm 1 in continuous time): alpha_z(t) = (alpha(t)
    - alpha(T)) / (1 - alpha(T)), std_z = sqrt(1 - alpha_z^2), i.e. the VP SDE with beta_z(t) =
    beta(t) alpha(t) / (alpha(t) - alpha(T)), which is infinite at T where alpha_z(T) = 0; the
    discrete chain's betas are rescaled the same way (`zero_terminal_snr_betas`).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000,
                 zero_terminal_snr: bool = False):
        super().__init__(beta_min, beta_max, N)
        self.zero_terminal_snr = bool(zero_terminal_snr)
        # alpha(T) of the linear schedule, subtracted by the zero-SNR rescaling (0: none).
        self.alpha_shift = math.exp(self.log_mean_coeff(self.T)) if self.zero_terminal_snr else 0.0
        if self.zero_terminal_snr:
            self._set_chain(zero_terminal_snr_betas(self.discrete_betas))

    def sde(self, x, t):
        t = t.to(x.dtype)
        beta_t = self.beta(t)
        if self.zero_terminal_snr:  # beta_z = -d log alpha_z^2 / dt
            alpha = torch.exp(self.log_mean_coeff(t))
            beta_t = beta_t * alpha / self._shifted_alpha(alpha)
        return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t)

    _std = staticmethod(torch.sqrt)

    def marginal_coeffs(self, t):
        if not self.zero_terminal_snr:
            return super().marginal_coeffs(t)
        log_alpha, a_T = self.log_mean_coeff(t), self.alpha_shift
        alpha = self._shifted_alpha(torch.exp(log_alpha)) / (1.0 - a_T)
        one_minus = -torch.expm1(log_alpha) / (1.0 - a_T)  # 1 - alpha_z, without cancellation
        return alpha, torch.sqrt(one_minus * (1.0 + alpha))

    def _shifted_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """alpha(t) - alpha(T), clamped at 0: in float32 it rounds to -1e-9 at T, which would make
        alpha_z(T) negative and the diffusion NaN instead of 0 and inf."""
        return (alpha - self.alpha_shift).clamp_min(0.0)

    def score_sde_std(self, t):
        return self.marginal_coeffs(t)[1] if self.zero_terminal_snr else super().score_sde_std(t)

    def t_from_log_snr(self, lam):
        """Closed form: alpha_z(t)^2 = sigmoid(lambda), and 2 log alpha(t) is a quadratic in t."""
        lam64 = lam.to(torch.float64)
        log_a2 = torch.nn.functional.logsigmoid(lam64)
        if self.zero_terminal_snr:
            a_T = self.alpha_shift
            log_a2 = 2.0 * torch.log(a_T + (1.0 - a_T) * torch.exp(0.5 * log_a2))
        b0, d = self.beta_min, self.beta_max - self.beta_min
        t = (-b0 + torch.sqrt(b0**2 - 2.0 * d * log_a2)) / d
        return t.to(lam.dtype)

    def hparams(self) -> dict:
        extra = {"zero_terminal_snr": True} if self.zero_terminal_snr else {}
        return {**super().hparams(), **extra}


class CosineVPSDE(_DDPMChain, SDE):
    """The VP SDE of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17): alpha(t)^2 = f(t) / f(0),
    f(t) = cos^2(phi(t)), phi(t) = ((t / T + s) / (1 + s)) pi / 2; std = sqrt(1 - alpha^2) and
    beta(t) = -d log alpha^2 / dt = pi tan(phi(t)) / ((1 + s) T), infinite at T where alpha(T) = 0.

    Its DDPM chain is theirs: beta_i = min(1 - f((i + 1) / N) / f(i / N), 0.999), i = 0..N-1.
    """

    max_beta = 0.999

    def __init__(self, s: float = 0.008, N: int = 1000):
        super().__init__(N)
        _check(s >= 0, f"s must be >= 0, got {s}")
        self.s = float(s)
        i = torch.arange(self.N + 1, dtype=torch.float64)
        f = torch.cos((i / self.N + self.s) / (1 + self.s) * math.pi / 2) ** 2
        self._set_chain((1.0 - f[1:] / f[:-1]).clamp(max=self.max_beta))

    def _angles(self, t):
        """(pi/2 - phi(t), phi(t) - phi(0), phi(0)): the forms that stay exact near T and near 0."""
        scale = 0.5 * math.pi / (1 + self.s)
        return scale * (1 - t / self.T), scale * t / self.T, scale * self.s

    def marginal_coeffs(self, t):
        """alpha = cos(phi) / cos(phi_0), std^2 = sin(phi - phi_0) sin(phi + phi_0) / cos^2(phi_0)
        (= 1 - alpha^2 without cancellation); alpha(T) = 0 exactly."""
        to_end, from_start, phi0 = self._angles(t)
        alpha = torch.sin(to_end) / math.cos(phi0)
        std = torch.sqrt(torch.sin(from_start) * torch.sin(from_start + 2 * phi0)) / math.cos(phi0)
        return alpha, std

    def sde(self, x, t):
        to_end = self._angles(t.to(x.dtype))[0]
        beta_t = math.pi / ((1 + self.s) * self.T) / torch.tan(to_end)  # pi tan(phi) / ((1 + s) T)
        return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t)

    def t_from_log_snr(self, lam):
        """Closed form: cos(phi(t)) = sqrt(sigmoid(lambda)) cos(phi_0)."""
        alpha = torch.sigmoid(lam.to(torch.float64)).sqrt()
        phi = torch.arccos(alpha * math.cos(self._angles(0.0)[2]))
        return (self.T * (2 * (1 + self.s) * phi / math.pi - self.s)).to(lam.dtype)

    def _check_chain(self) -> None:
        """Nothing to check: the betas are clipped at `max_beta` < 1."""

    def hparams(self) -> dict:
        return {"s": self.s, "N": self.N}


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw (Eq. 12)."""

    def sde(self, x, t):
        t = t.to(x.dtype)
        beta_t = self.beta(t)
        discount = -torch.expm1(4.0 * self.log_mean_coeff(t))  # 1 - exp(-2 int_0^t beta(s) ds)
        return -0.5 * append_dims(beta_t, x.ndim) * x, torch.sqrt(beta_t * discount)

    @staticmethod
    def _std(one_minus_alpha2):
        return one_minus_alpha2


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dw, sigma(t) = sigma_min (sigma_max /
    sigma_min)^t (Eq. 9, 30); SMLD / NCSN at N noise levels.

    As in score_sde, the kernel std is sigma(t) (not sqrt(sigma(t)^2 - sigma_min^2)): p_t is the
    data convolved with N(0, sigma(t)^2 I), which solves the SDE's Fokker-Planck equation from
    p_0 = data * N(0, sigma_min^2 I).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        _check(sigma_min > 0, f"sigma_min must be > 0, got {sigma_min}")
        _check(sigma_max > sigma_min, f"sigma_max must be > sigma_min, got {sigma_max} <= {sigma_min}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = torch.exp(
            torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=torch.float64)
        )

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        sigma = self.sigma(t.to(x.dtype))
        diffusion = sigma * math.sqrt(2.0 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), diffusion

    def marginal_coeffs(self, t):
        return torch.ones_like(t), self.sigma(t)

    def t_from_log_snr(self, lam):
        """Closed form: lambda = -2 log sigma(t)."""
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        return (-0.5 * lam - math.log(self.sigma_min)) / log_ratio

    chain = "smld"

    def _chain_marginal(self, i, like):
        sigma = self._buffer("discrete_sigmas", like)[i]  # (B,)
        return torch.ones_like(sigma), sigma

    def _adjacent_sigmas(self, x, t):
        i = self.timestep(t)
        sigmas = self._buffer("discrete_sigmas", x)
        previous = torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[(i - 1).clamp_min(0)])
        return sigmas[i], previous

    def discretize(self, x, t):
        """The SMLD chain x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z (Eq. 45)."""
        sigma, previous = self._adjacent_sigmas(x, t)
        return torch.zeros_like(x), torch.sqrt(sigma**2 - previous**2)

    def ancestral_step(self, x, t, score):
        """Ancestral sampling of the SMLD chain (Eq. 47 of Song et al. 2021)."""
        sigma, previous = self._adjacent_sigmas(x, t)
        x_mean = x + append_dims(sigma**2 - previous**2, x.ndim) * score
        std = torch.sqrt(previous**2 * (sigma**2 - previous**2) / sigma**2)
        return x_mean, std

    def hparams(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
