"""A training run around `fit`: claim the run directory, set up logging, train, clean up.

`python -m sde.train` (sde/train.py) builds the objects from the config and calls `train_run`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

from sde.runs.files import check_writable, locked
from sde.runs.logger import attach_file_log, make_logger
from sde.training.distributed import DistInfo, cleanup

log = logging.getLogger("sde.train")
LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def claim_run_dir(run_dir, info: DistInfo):
    """On rank 0: check that `run_dir` is writable (before any work) and hold its lock, so a
    second trainer in the same folder stops with a clear message instead of interleaving."""
    if not info.is_main:
        yield Path(run_dir)
        return
    run_dir = check_writable(run_dir)
    lock = run_dir / LOCK_NAME
    message = (f"run directory {run_dir} is in use by another sde.train (process "
               f"{_holder(lock)}); wait for it to finish, or train into another hydra.run.dir")
    with locked(lock, blocking=False, message=message):
        lock.with_suffix(".pid").write_text(f"{os.getpid()}\n")
        yield run_dir


def _holder(lock: Path) -> str:
    pid = lock.with_suffix(".pid")
    return pid.read_text().strip() if pid.is_file() else "unknown"


def train_run(*, sde, model, loss_fn, data, score_options: dict, settings, run_dir,
              config: dict, logger_options: dict, info: DistInfo) -> dict:
    """Train into `run_dir` with the logger of `logger_options` (rank 0); see `loop.fit`."""
    from sde.models import get_score_fn
    from sde.training import loop

    run_dir = Path(run_dir)
    if info.is_main:
        attach_file_log(run_dir)
    else:  # only rank 0 logs
        log.setLevel(logging.WARNING)
    logger = make_logger(**logger_options, run_dir=run_dir, config=config, is_main=info.is_main)
    try:
        return loop.fit(sde=sde, model=model, loss_fn=loss_fn, data=data,
                        get_score_fn=functools.partial(get_score_fn, **score_options),
                        run_dir=run_dir, config=config, settings=settings, info=info,
                        logger=logger)
    finally:
        cleanup()
