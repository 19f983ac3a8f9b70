"""`load_run`: a trained run, rebuilt from a checkpoint alone (see sde.runs.checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sde.runs.checkpoint import CheckpointError, check_finite_weights, latest_checkpoint, load_checkpoint
from sde.runs.env import resolve_device


@dataclass
class Run:
    """A trained model with everything needed to use it.

    sde: the SDE; model: the network (eval mode, on `device`); score_fn: `score_fn(x, t)` in
    model space (data scaled as in training); config: the resolved training config (dict);
    scaler / inverse_scaler: data in [0, 1] (images) or as is (continuous) <-> model space;
    shape: the shape of one example; data: the `data` config section; step: training steps done;
    path: the checkpoint file.
    """

    sde: object
    model: nn.Module
    score_fn: object
    config: dict
    scaler: object
    inverse_scaler: object
    shape: tuple
    data: dict
    step: int
    path: Path
    ema: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _instantiate(section: dict):
    from hydra.utils import instantiate

    return instantiate(section)


def load_run(path, *, ema: bool = True, device=None) -> Run:
    """Load a run directory (its newest checkpoint) or a checkpoint file of this codebase.

    The network gets the EMA weights unless `ema=False`, and is put in eval mode on `device`
    (default: CUDA if available, else CPU). NaN/Inf weights are refused with the tensor named.
    """
    from sde.data import data_scalers
    from sde.models import get_score_fn

    file = latest_checkpoint(path)
    if file is None:
        raise CheckpointError(f"no checkpoint in {path}: expected {Path(path)}/checkpoints/"
                              "ckpt_<step>.pt or a checkpoint file")
    ckpt = load_checkpoint(file)
    config = ckpt["config"]
    device = resolve_device(device)
    weights = ckpt["ema"] if ema else ckpt["model"]
    check_finite_weights(weights, file, which="EMA" if ema else "raw")
    try:
        sde = _instantiate(config["sde"])
        model = _instantiate(config["model"])
        model.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{file} does not match this codebase's networks/SDEs "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    model = model.to(device).eval().requires_grad_(False)
    data = config["data"]
    scaler, inverse_scaler = data_scalers(levels=data.get("levels"), centered=data["centered"])
    score_fn = get_score_fn(sde, model, **config.get("score", {}))
    return Run(sde=sde, model=model, score_fn=score_fn, config=config, scaler=scaler,
               inverse_scaler=inverse_scaler, shape=tuple(data["shape"]), data=data,
               step=int(ckpt["step"]), path=file, ema=ema)
