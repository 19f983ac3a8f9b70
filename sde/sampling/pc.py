"""The predictor-corrector sampler (Algorithm 1 of Song et al. 2021)."""

from __future__ import annotations

import warnings

import torch

from sde.sampling.correctors import get_corrector
from sde.sampling.predictors import get_predictor
from sde.utils import CountedScore, batch_time, check_eps


@torch.no_grad()
def pc_sample(sde, score_fn, shape, *, predictor="reverse_diffusion", corrector="langevin",
              snr=0.16, n_steps=1, probability_flow=False, denoise=True, eps=1e-3,
              generator=None, device=None, dtype=torch.float32, callback=None,
              corrector_options=None):
    """Predictor-corrector sampling (Algorithm 1 of Song et al. 2021) -> (x, nfe).

    Starts from x_T ~ prior and, at each t of linspace(T, eps, N) (score_sde's grid) up to
    `sde.sampling_T` (T, or just below it where alpha(T) = 0), runs the
    corrector then the predictor. Returns the last step's noise-free mean when `denoise` is set
    (the last noise is not added), else its noisy output. `nfe` is the number of `score_fn` calls.
    `callback`, if given, is called after each step with a dict {i, t, x, x_mean}.
    `corrector_options` are extra keyword arguments of the corrector (e.g. `{"per_example": True}`
    for a Langevin step size that does not couple the batch).
    """
    check_eps(sde, eps)
    counted = CountedScore(score_fn)
    predictor_obj = get_predictor(predictor)(sde, counted, probability_flow)
    corrector_obj = get_corrector(corrector)(sde, counted, snr, n_steps, **(corrector_options or {}))
    timesteps = torch.linspace(sde.T, eps, sde.N, dtype=torch.float64)
    timesteps = timesteps[timesteps <= sde.sampling_T]  # alpha(T) = 0: start below T
    check_chain(sde, predictor_obj, corrector_obj, timesteps)
    x = sde.prior_sampling(shape, generator, device=device, dtype=dtype)  # (B, ...)
    x_mean = x
    for i, t in enumerate(timesteps.tolist()):
        vec_t = batch_time(t, x)  # (B,)
        x, x_mean = corrector_obj.update_fn(x, vec_t, generator)
        x, x_mean = predictor_obj.update_fn(x, vec_t, generator)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x_mean": x_mean})
    x = x_mean if denoise else x
    counted.check(x, what="pc_sample")
    return x, counted.nfe


def check_chain(sde, predictor, corrector, timesteps: torch.Tensor, what: str = "pc_sample") -> None:
    """Raise a ValueError, before any sampling, if the predictor's or the corrector's (None: no
    corrector) discrete steps are invalid on this grid (VP's DDPM chain with N <= beta_max has
    betas >= 1: NaN). `what` names the caller in the message."""
    steppers = [s for s in (predictor, corrector) if s is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDE's own warning; the error below replaces it
        problems = [p for p in (s.check_steps(timesteps) for s in steppers) if p]
    if problems:
        raise ValueError(
            f"{what} on {sde!r}: {'; '.join(problems)}. The discrete chain needs more steps: "
            f"for VP / sub-VP its betas beta_max / N must stay below 1, so use N (sampler.steps) "
            f"> beta_max, or a continuous-time sampler (predictor='euler_maruyama' with "
            f"corrector='none', sampler=ode, or a fast sampler such as dpm_solver_pp)")
