"""Predictors of the predictor-corrector sampler (Algorithms 2-3 of Song et al. 2021).

A predictor takes one step of a reverse-time discretisation from t towards 0. Each is built as
`Cls(sde, score_fn, probability_flow=False)` and has `update_fn(x, t, generator=None) ->
(x, x_mean)`, `x_mean` being the step without its fresh noise. As in score_sde, a step does not
see the next time: its size is fixed by the discretisation (dt = -T / N, or the discrete chain
index of t), and `pc_sample` walks the grid linspace(T, eps, N).
"""

from __future__ import annotations

import math

import torch

from sde.utils import append_dims, lookup, randn_like


class Predictor:
    """Base class: stores the SDE, the score function and the reverse SDE / probability-flow ODE."""

    def __init__(self, sde, score_fn, probability_flow: bool = False):
        self.sde, self.score_fn, self.probability_flow = sde, score_fn, bool(probability_flow)
        self.rsde = sde.reverse(score_fn, probability_flow)

    def update_fn(self, x: torch.Tensor, t: torch.Tensor, generator=None):
        raise NotImplementedError

    def check_steps(self, t: torch.Tensor) -> str | None:
        """What is wrong with this predictor's discrete steps at the times t (N,), or None."""
        return None


class EulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama step of the reverse SDE (Eq. 6) or probability-flow ODE, dt = -T / N."""

    def update_fn(self, x, t, generator=None):
        dt = -self.sde.T / self.sde.N
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        if self.probability_flow:
            return x_mean, x_mean
        noise = randn_like(x, generator)
        return x_mean + append_dims(diffusion, x.ndim) * math.sqrt(-dt) * noise, x_mean


class ReverseDiffusionPredictor(Predictor):
    """Reverse diffusion: the forward chain `discretize` run backwards, x - f + G z (Eq. 46)."""

    def check_steps(self, t):
        """The forward step x + f must keep the sign of x (f / x > -1; for DDPM's chain
        sqrt(1 - beta_i) > 0) and G must be finite."""
        one = torch.ones(t.shape[0], 1, dtype=torch.float64)
        f, G = self.sde.discretize(one, t.to(torch.float64))
        bad = ~(torch.isfinite(f[:, 0]) & torch.isfinite(G) & (one[:, 0] + f[:, 0] > 0))
        return _first_bad(bad, t, "the forward step x + f(x) of `discretize` flips or zeroes x "
                                  "or is not finite")

    def update_fn(self, x, t, generator=None):
        f, G = self.rsde.discretize(x, t)
        x_mean = x - f
        if self.probability_flow:
            return x_mean, x_mean
        return x_mean + append_dims(G, x.ndim) * randn_like(x, generator), x_mean


class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the DDPM / SMLD chains (Eq. 47; Algorithm 2 of Ho et al. 2020).

    Defined by `sde.ancestral_step`, which raises for SDEs without a discrete chain (sub-VP).
    There is no deterministic (probability-flow) version of ancestral sampling: use
    `reverse_diffusion` or `euler_maruyama` with `probability_flow=True`, or DDIM.
    """

    def __init__(self, sde, score_fn, probability_flow: bool = False):
        if probability_flow:
            raise ValueError(
                "ancestral_sampling has no probability-flow version; use predictor="
                "'reverse_diffusion' or 'euler_maruyama' with probability_flow=True"
            )
        # Fail at construction, not mid-sampling, for SDEs without a discrete chain.
        probe = torch.zeros(1, 1, dtype=torch.float64)
        sde.ancestral_step(probe, torch.full((1,), sde.sampling_T, dtype=torch.float64), probe)
        super().__init__(sde, score_fn, probability_flow)

    def check_steps(self, t):
        one = torch.ones(t.shape[0], 1, dtype=torch.float64)
        x_mean, std = self.sde.ancestral_step(one, t.to(torch.float64), torch.zeros_like(one))
        bad = ~(torch.isfinite(x_mean[:, 0]) & torch.isfinite(std))
        return _first_bad(bad, t, "the ancestral step is not finite")

    def update_fn(self, x, t, generator=None):
        x_mean, std = self.sde.ancestral_step(x, t, self.score_fn(x, t))
        return x_mean + append_dims(std, x.ndim) * randn_like(x, generator), x_mean


class NonePredictor(Predictor):
    """The identity: corrector-only sampling (e.g. annealed Langevin dynamics of SMLD)."""

    def update_fn(self, x, t, generator=None):
        return x, x


def _first_bad(bad: torch.Tensor, t: torch.Tensor, what: str) -> str | None:
    """`what` and the first time t where `bad` (N,) holds, or None if nowhere."""
    if not bool(bad.any()):
        return None
    return f"{what} at t = {t[bad.nonzero()[0, 0]].item():.4g}"


PREDICTORS = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}


def get_predictor(name: str) -> type[Predictor]:
    """The predictor class registered under `name`."""
    return lookup(PREDICTORS, name, "predictor")
