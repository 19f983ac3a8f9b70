"""Samplers: predictor-corrector and probability-flow ODE (Song et al. 2021), and fast solvers
(DDIM, EDM's Heun, DPM-Solver, DPM-Solver++, adaptive SDE, UniPC, DEIS), all selectable by
`get_sampler(name)`."""

from sde.sampling.controllable import (  # noqa: F401
    classifier_guided_score,
    colorize,
    guided_score,
    inpaint,
)
from sde.sampling.correctors import (
    CORRECTORS,
    AnnealedLangevinDynamics,
    Corrector,
    LangevinCorrector,
    NoneCorrector,
    get_corrector,
)
from sde.sampling.fast import (
    adaptive_sample,
    ddim_sample,
    dpm_solver_pp_sample,
    dpm_solver_sample,
    heun_sample,
)
from sde.sampling.grids import get_time_grid
from sde.sampling.multistep import deis_sample, unipc_sample
from sde.sampling.ode import denoise_step, ode_sample, solve_pf_ode
from sde.sampling.optimal_grid import kl_upper_bound, optimize_grid
from sde.sampling.pc import pc_sample
from sde.sampling.predictors import (
    PREDICTORS,
    AncestralSamplingPredictor,
    EulerMaruyamaPredictor,
    NonePredictor,
    Predictor,
    ReverseDiffusionPredictor,
    get_predictor,
)
from sde.sampling.registry import get_sampler

__all__ = [
    "get_sampler", "get_time_grid", "ddim_sample", "heun_sample", "dpm_solver_sample",
    "dpm_solver_pp_sample", "adaptive_sample", "unipc_sample", "deis_sample",
    "optimize_grid", "kl_upper_bound",
    "pc_sample", "ode_sample", "solve_pf_ode", "denoise_step",
    "get_predictor", "get_corrector", "PREDICTORS", "CORRECTORS",
    "Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor",
    "AncestralSamplingPredictor", "NonePredictor",
    "Corrector", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector",
]
