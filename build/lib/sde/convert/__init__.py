"""Converters from other codebases' checkpoints (score_sde_pytorch) to this codebase's networks."""

from sde.convert.score_sde import (
    build_model,
    convert_checkpoint,
    convert_ema,
    convert_state_dict,
    model_spec,
    score_fn_options,
)

__all__ = ["build_model", "convert_checkpoint", "convert_ema", "convert_state_dict",
           "model_spec", "score_fn_options"]
