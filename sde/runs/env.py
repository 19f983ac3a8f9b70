"""What every entry point shares: the device default, the seed scheme, the exit-code policy.

Seeds. Sample i of a call with `seed=S` draws all its noise from its own generator seeded
`S * 1_000_000 + i` (`sample_seeds`; EDM's per-image seeds), so `n=64` is a prefix of `n=128`,
a sample does not depend on the batch size or on how many processes share the work. Every other
random stream (training batches, loss noise, dequantization and Hutchinson probes of an
evaluation) is keyed by a tuple of integers (`stream_generator`, numpy's SeedSequence), so it is
stateless and exactly resumable.

Exit codes. A problem with the user's input or files (`UserError`: ValueError, FileNotFoundError,
OSError such as a full or read-only run folder, a NaN loss) prints `sde.<entry>: error: ...` on
stderr and exits with status 2, without a traceback (HYDRA_FULL_ERROR=1 shows it); anything else
is a bug and shows its traceback (status 1).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import numpy as np
import torch

SEED_STRIDE = 1_000_000
EXIT_USER_ERROR = 2
USER_ERRORS = (ValueError, FileNotFoundError, OSError, FloatingPointError)


def sample_seeds(seed: int, n: int, *, first: int = 0) -> list[int]:
    """Per-sample seeds seed * 1_000_000 + i for first <= i < n (see the module docstring)."""
    if n > SEED_STRIDE:
        raise ValueError(f"n={n} exceeds the {SEED_STRIDE} samples one seed covers; split the "
                         "call over seed=S, S+1, ...")
    return [seed * SEED_STRIDE + i for i in range(first, n)]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixing the integers `parts` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def stream_generator(*parts: int, device="cpu") -> torch.Generator:
    """A generator for the random stream keyed by `parts`, e.g. (seed, rank, step, stream)."""
    return torch.Generator(device).manual_seed(mix_seed(*parts))


def resolve_device(device: str | None = None, *, local_rank: int = 0, key: str = "device"):
    """None / "auto": the local rank's GPU if there is one, else the CPU; otherwise `device`
    checked (a ValueError naming `key` for CUDA on a machine without it, or a bad name)."""
    if device in (None, "", "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{key}={device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}={device} but no CUDA device is available; use {key}=cpu "
                         f"(or {key}=auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def exit_on_error(entry: str):
    """Decorator for an entry point's main: a `USER_ERRORS` exception becomes one line on
    stderr and exit status 2 (see the module docstring)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                logging.getLogger(f"sde.{entry}").error("%s", e)
                print(f"sde.{entry}: error: {e}", file=sys.stderr, flush=True)
                sys.exit(EXIT_USER_ERROR)

        return wrapped

    return decorate


def check_int(value, key: str, low: int = 0) -> int:
    """`value` if it is an integer >= `low` (not a bool, not a string); else a ValueError naming
    `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def check_bool(value, key: str) -> bool:
    """`value` if it is True or False (`ema=no` is the string 'no': refused, not truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value
