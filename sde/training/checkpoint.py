"""Checkpoints moved to `sde.runs.checkpoint` (they belong to the run directory, which inference
reads too); this name stays importable."""

from sde.runs.checkpoint import (  # noqa: F401
    FORMAT,
    CheckpointError,
    check_finite_weights,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
