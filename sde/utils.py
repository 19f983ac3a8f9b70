"""Helpers shared by every module: broadcasting, seeded noise, batched time."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generator = torch.Generator


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so that a `(B,)` tensor broadcasts against `ndim` dims."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def batch_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A `(B,)` time tensor on `x`'s device and dtype from a scalar or a `(B,)` tensor."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0]).clone()
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or shaped ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class PerSampleGenerator:
    """One `torch.Generator` per example, so that a sample does not depend on the batch size.

    After EDM's `StackedRandomGenerator` (Karras et al. 2022): example `i` of the batch draws
    its noise from `torch.Generator().manual_seed(seeds[i])`. Pass it wherever a sampler takes
    `generator=`.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape, *, device=None, dtype=None) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"batch of {shape[0]} but {len(self.generators)} per-sample seeds")
        noise = [
            torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
            for g in self.generators
        ]
        return torch.stack(noise).to(device or self.device)

    def randint(self, low, high, shape, *, device=None) -> torch.Tensor:
        draws = [torch.randint(low, high, tuple(shape[1:]), generator=g, device=self.device)
                 for g in self.generators]
        return torch.stack(draws).to(device or self.device)


def randn(shape, generator=None, *, device=None, dtype=None) -> torch.Tensor:
    """Standard normal noise from `generator` (a `torch.Generator`, a `PerSampleGenerator`, or None
    for the global RNG), placed on `device`."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
        return noise.to(device) if device is not None else noise
    return generator.randn(shape, device=device, dtype=dtype)


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """`torch.randn_like(x)` drawn from `generator` (see `randn`)."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def rademacher_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Random signs shaped like `x`, from `generator` (see `randn`)."""
    noise = randn_like(x, generator)
    return torch.where(noise >= 0, torch.ones_like(noise), -torch.ones_like(noise))


def flat_dim(x: torch.Tensor) -> int:
    """Number of dimensions of one example: prod(x.shape[1:])."""
    n = 1
    for s in x.shape[1:]:
        n *= s
    return n


def check_eps(sde, eps: float) -> None:
    """Raise a ValueError unless the end time `eps` lies in (0, T)."""
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")


def lookup(registry: dict, name: str, kind: str):
    """`registry[name]`, or a ValueError naming the `kind` and listing the known names."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(registry)}")
    return registry[name]


class NonFiniteError(FloatingPointError, ValueError):
    """A sampler or the likelihood met NaN or Inf (a ValueError too, so entry points report it
    as a bad input rather than a crash)."""


def check_tolerances(**tolerances) -> None:
    """Raise a ValueError naming each tolerance (rtol=..., atol=...) that is not a number > 0."""
    for key, value in tolerances.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{key} must be a number > 0 (an ODE solver tolerance, e.g. "
                             f"{key}=1e-5), got {value!r}")


class CountedScore:
    """Wraps a `score_fn(x, t)`, counts its calls (the NFE every sampler reports) and records,
    without a device sync, whether every output was finite; `check` syncs once at the end."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.nfe = 0
        self.finite = None  # a 0-d bool tensor once called: all outputs finite so far

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        score = self.score_fn(x, t)
        ok = torch.isfinite(score.detach()).all()
        self.finite = ok if self.finite is None else self.finite & ok
        return score

    def check(self, *outputs: torch.Tensor, what: str = "sampling") -> None:
        """Raise NonFiniteError if a score call returned NaN/Inf, or if an output is not finite."""
        if self.finite is not None and not bool(self.finite):
            raise NonFiniteError(
                f"score_fn returned NaN or Inf during {what} (within {self.nfe} calls), so the "
                f"result would be NaN: check the network weights (a checkpoint with NaN?), the "
                f"data scaling and the SDE's parameters")
        for out in outputs:
            if not bool(torch.isfinite(out).all()):
                raise NonFiniteError(
                    f"{what} produced NaN or Inf although every score_fn call was finite: the "
                    f"solver diverged; use more steps, a smaller tolerance or another sampler")
