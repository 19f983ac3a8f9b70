"""Every sampler by name, with one calling convention:
`sampler(sde, score_fn, shape, *, steps, grid=..., eps=..., generator=None, device=None,
dtype=torch.float32, **options) -> (x, nfe)`."""

from __future__ import annotations

import inspect

import torch

from sde.sampling.fast import (
    adaptive_sample,
    ddim_sample,
    dpm_solver_pp_sample,
    dpm_solver_sample,
    heun_sample,
)
from sde.sampling.multistep import deis_sample, unipc_sample
from sde.utils import lookup


def with_steps(sde, steps: int):
    """A copy of `sde` with N = steps discretisation steps (the same SDE otherwise)."""
    return type(sde)(**{**sde.hparams(), "N": steps})


def pc(sde, score_fn, shape, *, steps=None, grid="uniform", eps=1e-3, generator=None,
       device=None, dtype=torch.float32, **options):
    """`pc_sample` (Algorithm 1 of Song et al. 2021) on N = `steps` predictor steps (default:
    the SDE's own N). The predictors follow the SDE's discrete chain on linspace(T, eps, N),
    so the SDE is rebuilt with N = steps and only the uniform grid exists. `options` go to
    `pc_sample` (predictor, corrector, snr, n_steps, probability_flow, denoise)."""
    from sde.sampling.pc import pc_sample

    if grid not in ("uniform", None):
        raise ValueError(f"the pc sampler steps on linspace(T, eps, N); grid must be 'uniform' "
                         f"(or None), got {grid!r}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        sde = with_steps(sde, steps)
    return pc_sample(sde, score_fn, shape, eps=eps, generator=generator, device=device,
                     dtype=dtype, **options)


def ode(sde, score_fn, shape, *, steps=None, grid=None, eps=1e-3, generator=None,
        device=None, dtype=torch.float32, **options):
    """`ode_sample` (probability-flow ODE with torchdiffeq). Adaptive methods (dopri5, the
    default) choose their steps from rtol/atol, so `steps` must stay None; a fixed-grid method
    ("euler", "rk4", ...) takes `steps` uniform steps. `options` go to `ode_sample`."""
    from sde.sampling.ode import FIXED_GRID_METHODS, ode_sample

    if grid is not None:
        raise ValueError(f"ode_sample picks its own steps; pass grid=None, not {grid!r}")
    if steps is not None:
        if options.get("method", "dopri5") not in FIXED_GRID_METHODS:
            raise ValueError("steps only applies to a fixed-grid ODE method (e.g. method='rk4'); "
                             "adaptive methods take rtol/atol")
        sde = with_steps(sde, steps)
    return ode_sample(sde, score_fn, shape, eps=eps, generator=generator, device=device,
                      dtype=dtype, **options)


def distilled(sde, score_fn, shape, **options):
    """`sde.distill.sampling.distilled_sample`: K network calls on the nested grid a distilled
    student was trained for (imported on use: sde.distill builds on sde.sampling)."""
    from sde.distill.sampling import distilled_sample

    return distilled_sample(sde, score_fn, shape, **options)


SAMPLERS = {
    "pc": pc,
    "ode": ode,
    "ddim": ddim_sample,
    "heun": heun_sample,
    "dpm_solver": dpm_solver_sample,
    "dpm_solver_pp": dpm_solver_pp_sample,
    "adaptive": adaptive_sample,
    "unipc": unipc_sample,
    "deis": deis_sample,
    "distilled": distilled,
}


def get_sampler(name: str):
    """The sampler function registered under `name` (see SAMPLERS)."""
    return lookup(SAMPLERS, name, "sampler")


def _option_names(name: str) -> set[str] | None:
    """The keyword options sampler `name` takes (None: any); pc, ode and distilled pass their
    **options on to pc_sample, ode_sample and distilled_sample."""
    from sde.distill.sampling import distilled_sample
    from sde.sampling.ode import ode_sample
    from sde.sampling.pc import pc_sample

    fns = [get_sampler(name)]
    fns += {"pc": [pc_sample], "ode": [ode_sample], "distilled": [distilled_sample]}.get(name, [])
    names = set()
    for fn in fns:
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        if fn is fns[-1] and any(p.kind == p.VAR_KEYWORD for p in params):
            return None
    return names


def check_sampler_options(name: str, options) -> None:
    """A ValueError naming the options that sampler `name` does not take, before any work (an
    experiment's `sampler.*` keys stay when the command line switches to another sampler)."""
    known = _option_names(name)
    unknown = sorted(set(options) - known) if known is not None else []
    if unknown:
        raise ValueError(f"sampler={name} takes no option {', '.join(unknown)} (its options: "
                         f"{', '.join(sorted(known - {'generator', 'device', 'dtype'}))}); drop "
                         f"it with ~sampler.{unknown[0]} (the experiment may set it for another "
                         "sampler)")
