"""Loading tensors from files a user may have downloaded, without ever executing their code.

Every `.pt`/`.pth` this codebase reads (its own checkpoints, score_sde_pytorch checkpoints,
Inception weights) goes through `load_weights_only`: `torch.load(weights_only=True)` refuses any
pickled global outside plain containers and tensors, and this turns that refusal into an error
that says the file contains code and names the global, instead of calling the file corrupt.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")


class UnsafeFileError(ValueError):
    """The file holds pickled code (a global beyond tensors and containers); it was not run."""


def load_weights_only(path, *, map_location="cpu", what: str = "file"):
    """`torch.load(path, weights_only=True)`; a file holding pickled code raises `UnsafeFileError`
    naming the blocked global. Other failures propagate unchanged for the caller to describe."""
    path = Path(path).expanduser()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.search(str(e))
        if found is None:
            raise
        raise UnsafeFileError(
            f"refused to load {what} {path}: it contains code (the pickled global "
            f"`{found.group(1)}`), and this codebase only loads tensors (torch.load with "
            "weights_only=True). Nothing in it was executed. Use a checkpoint written by "
            "sde.train or sde.convert, or a plain state_dict of tensors.") from None
