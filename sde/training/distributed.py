"""DDP for training: `trainer.batch_size` is the global batch; each of K processes takes
batch_size / K examples from its own shard of the data, with its own seeds. The process-group
set-up is `sde.runs.distributed` (sampling and evaluation shard over ranks too)."""

from __future__ import annotations

from sde.runs.distributed import (  # noqa: F401
    DistInfo,
    all_mean,
    barrier,
    cleanup,
    init_distributed,
    pick_device,
)


def per_rank_batch(global_batch: int, world: int) -> int:
    """The per-process batch of a global batch split over `world` processes."""
    if global_batch % world:
        raise ValueError(f"trainer.batch_size={global_batch} is the global batch and must be "
                         f"divisible by the number of processes ({world})")
    return global_batch // world
