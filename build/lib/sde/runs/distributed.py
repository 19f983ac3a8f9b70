"""torchrun / SLURM process groups: NCCL on GPUs, gloo on CPU; only rank 0 logs and writes.

`torchrun --nproc_per_node=K -m sde.train ...` (or `-m sde.sample`, `-m sde.evaluate`) sets RANK,
WORLD_SIZE and LOCAL_RANK; without them everything runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sde.runs.env import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str | None = "auto", local_rank: int = 0, *, key: str = "trainer.device"):
    """`auto`: the local rank's GPU if there is one, else CPU; otherwise `device` as given."""
    return resolve_device(device, local_rank=local_rank, key=key)


def _from_slurm() -> None:
    """Translate a multi-task SLURM job (e.g. hydra-submitit-launcher with tasks_per_node > 1)
    into torchrun's variables; the master is the node that launched the job step."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ.update(WORLD_SIZE=os.environ["SLURM_NTASKS"], RANK=os.environ["SLURM_PROCID"],
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(device: str | None = "auto", *, key: str = "trainer.device") -> DistInfo:
    """Join the process group torchrun (or a multi-task SLURM job) describes, if any, and pick
    this process's device."""
    _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank, key=key)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def shard(n: int, info: DistInfo) -> range:
    """This rank's contiguous block of range(n): ranks in order cover 0..n-1 exactly once."""
    return range(n * info.rank // info.world, n * (info.rank + 1) // info.world)


def gather_to_main(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on rank 0 (an empty list elsewhere)."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def broadcast_from_main(obj, info: DistInfo):
    """Rank 0's `obj` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over ranks (a no-op in one process)."""
    if info.world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / info.world


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
