"""Samplers of Song et al. (2021): predictor-corrector and probability-flow ODE."""

from sde.sampling.correctors import (
    CORRECTORS,
    AnnealedLangevinDynamics,
    Corrector,
    LangevinCorrector,
    NoneCorrector,
    get_corrector,
)
from sde.sampling.ode import denoise_step, ode_sample, solve_pf_ode
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

# from sde.sampling.registry import get_sampler  (fast samplers: added with sde/sampling/fast.py)

__all__ = [
    "pc_sample", "ode_sample", "solve_pf_ode", "denoise_step",
    "get_predictor", "get_corrector", "PREDICTORS", "CORRECTORS",
    "Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor",
    "AncestralSamplingPredictor", "NonePredictor",
    "Corrector", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector",
]
