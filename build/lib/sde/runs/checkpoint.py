"""Crash-safe checkpoints of a run.

Run directory (rank 0 writes it; see docs/runs.md)::

    runs/<experiment>/<timestamp>/
        config.yaml                 the resolved config (also inside every checkpoint)
        checkpoints/ckpt_<step:08d>.pt
        samples/                    sample grids (PNG) / scatter plots of toy data
        metrics.json                train and eval results (sde.runs.metrics)
        train.log

A checkpoint is one `torch.save`d dict that loads with `torch.load(weights_only=True)`::

    {"format": "sde-checkpoint-v1",
     "model": state_dict,          # the trained weights (no DDP/compile prefixes)
     "ema": state_dict,            # EMA weights as a full state dict of the same model
     "optimizer": state_dict,
     "step": int,                  # optimisation steps done
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]},  # global RNG states at the save
     "config": dict}               # resolved config: plain dict/list/str/int/float/bool/None

The config's sections: `sde` and `model` (each with `_target_`, rebuilt by
`hydra.utils.instantiate`), `score` (the options of `sde.models.get_score_fn`), `data` (name,
shape, levels, centered, fingerprint, ...), `loss`, `optim`, `trainer`, `sampler`, `logger`,
`experiment`, `seed`. `sde.load_run` rebuilds everything from that config alone.

Writes go through `sde.runs.files.atomic_write` (temp file, fsync, os.replace): a crash
mid-write leaves the previous checkpoint intact; stray `.tmp` files are removed by the next save.
Only the newest `keep` checkpoints are kept. Loading goes through
`sde.serialization.load_weights_only`: a file holding pickled code is refused, naming the global.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sde.runs.files import atomic_write
from sde.serialization import UnsafeFileError, load_weights_only

FORMAT = "sde-checkpoint-v1"
_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or from something else."""


def checkpoint_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_{step:08d}.pt"


def list_checkpoints(run_dir) -> list[Path]:
    """The checkpoints of a run directory, oldest first (by step)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(path) -> Path | None:
    """`path` itself if it is a file, else the newest checkpoint of run directory `path`."""
    path = Path(path)
    if path.is_file():
        return path
    found = list_checkpoints(path)
    return found[-1] if found else None


def save_checkpoint(state: dict, run_dir, step: int, *, keep: int = 3) -> Path:
    """Write `state` atomically as checkpoints/ckpt_<step>.pt; delete all but the newest `keep`."""
    path = checkpoint_path(run_dir, step)
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state, "step": int(step)}, f))
    for old in list_checkpoints(run_dir)[: -max(int(keep), 1)]:
        old.unlink(missing_ok=True)
    for stray in path.parent.glob("*.tmp"):
        stray.unlink(missing_ok=True)
    return path


def load_checkpoint(path, *, map_location="cpu") -> dict:
    """Load a checkpoint file (weights only) and check its format; one clear error if not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = load_weights_only(path, map_location=map_location, what="checkpoint")
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # torch raises many kinds for truncated / foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not an sde checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Delete it to "
            "resume from the previous one.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an {FORMAT} checkpoint (format: {found!r})")
    missing = [k for k in ("model", "ema", "step", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return ckpt


def check_finite_weights(state: dict, path, *, which: str) -> None:
    """A `CheckpointError` naming the first tensor of `state` holding NaN or Inf."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{path}: the {which} weights hold {bad} NaN/Inf values (first in {name!r}); the "
                "run diverged before this save. Use an earlier checkpoint (or ema=false / true).")


def rng_state() -> dict:
    """The global RNG states (CPU and every CUDA device) as tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
