"""torchrun / DDP set-up: NCCL on GPUs, gloo on CPU; only rank 0 logs and writes.

`torchrun --nproc_per_node=K -m sde.train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them everything runs in one process. `trainer.batch_size` is the global batch: each of the K
processes takes batch_size / K examples from its own shard of the data, with its own seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str | None = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: the local rank's GPU if there is one, else CPU; otherwise `device` as given."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; "
                         "use trainer.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _from_slurm() -> None:
    """Translate a multi-task SLURM job (e.g. hydra-submitit-launcher with tasks_per_node > 1)
    into torchrun's variables; the master is the node that launched the job step."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ.update(WORLD_SIZE=os.environ["SLURM_NTASKS"], RANK=os.environ["SLURM_PROCID"],
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("MASTER_ADDR", os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    os.environ.setdefault("MASTER_PORT", "29500")


def init_distributed(device: str | None = "auto") -> DistInfo:
    """Join the process group torchrun (or a multi-task SLURM job) describes, if any, and pick
    this process's device."""
    _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def per_rank_batch(global_batch: int, world: int) -> int:
    """The per-process batch of a global batch split over `world` processes."""
    if global_batch % world:
        raise ValueError(f"trainer.batch_size={global_batch} is the global batch and must be "
                         f"divisible by the number of processes ({world})")
    return global_batch // world


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
