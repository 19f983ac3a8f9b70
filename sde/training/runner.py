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
              config: dict, logger_options: dict, info: DistInfo, task: str = "score") -> dict:
    """Train into `run_dir` with the logger of `logger_options` (rank 0); see `loop.fit`.
    `task="classifier"`: a noise-conditional classifier on the same loop (`classifier_task`)."""
    from sde.models import get_score_fn
    from sde.training import loop

    wrap = functools.partial(get_score_fn, **score_options)
    if task == "classifier":
        wrap, settings = classifier_task(loss_fn, data, score_options, settings)
    elif task != "score":
        raise ValueError(f"unknown task {task!r}; choose score, classifier or autoencoder")
    run_dir = Path(run_dir)
    if info.is_main:
        attach_file_log(run_dir)
    else:  # only rank 0 logs
        log.setLevel(logging.WARNING)
    logger = make_logger(**logger_options, run_dir=run_dir, config=config, is_main=info.is_main)
    try:
        return loop.fit(sde=sde, model=model, loss_fn=loss_fn, data=data,
                        get_score_fn=wrap,
                        run_dir=run_dir, config=config, settings=settings, info=info,
                        logger=logger)
    finally:
        cleanup()


def classifier_task(loss_fn, data, score_options: dict, settings):
    """(wrapper, settings) of the loop for a noise-conditional classifier (`task: classifier`):
    the network is wrapped by `get_classifier_fn` (time input as the score's), the labels of
    each batch ride in its `model_kwargs` as for a class-conditional score model, and nothing is
    sampled. Labelled data, `loss=classifier` and no label dropout are required."""
    import dataclasses

    from sde.losses import classifier_loss
    from sde.models.classifier import get_classifier_fn, time_options

    if getattr(data, "num_classes", None) is None:
        raise ValueError("task: classifier learns p_t(y | x_t) from labelled data: set "
                         "data.labels=true")
    if getattr(loss_fn, "func", loss_fn) is not classifier_loss:
        raise ValueError("task: classifier trains with the cross-entropy: set loss=classifier "
                         "(sde.losses.classifier_loss)")
    if settings.label_dropout > 0:
        raise ValueError(f"trainer.label_dropout={settings.label_dropout:g} would feed the null "
                         "label to a classifier: set trainer.label_dropout=0")
    if settings.num_samples:
        log.info("task: classifier draws no samples (trainer.num_samples=%d ignored)",
                 settings.num_samples)
    return (functools.partial(get_classifier_fn, **time_options(score_options)),
            dataclasses.replace(settings, num_samples=0))
