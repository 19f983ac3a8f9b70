"""The distillation loop: atomic checkpoints, exact resume, SIGTERM-safe stop, optional logger.

Step k draws its data batch and every random number of the method from generators seeded by
(seed, rank, k) (`sde.data.step_generator`), so a run resumed from the checkpoint of step k
continues exactly as the uninterrupted one (bit for bit on CPU). Checkpoints are the training
loop's (`sde.training.checkpoint`: temp file + os.replace), with the method's whole state under
"method" and the student as "model" / "ema" so `sde.load_run` reads a distilled run like any
other. SIGTERM / SIGINT: checkpoint the finished step, then return.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sde.data import _seed, step_generator
from sde.runs.paths import config_defaults
from sde.training import checkpoint as ckpt_lib
from sde.training.distributed import DistInfo, all_mean, barrier, per_rank_batch
from sde.training.logging import MetricsFile, NullLogger
from sde.training.loop import _check_finite, _stop_requested, _StopFlag

log = logging.getLogger("sde.distill")

DISTILL_STREAM, DROPOUT_STREAM = 7, 3


_D = {**config_defaults("distill/distill.yaml", "trainer"),
      "seed": config_defaults("distill/distill.yaml", "seed")}  # written once: in the config


@dataclass
class DistillSettings:
    """The `trainer` section (and seed) of conf/distill/distill.yaml as the loop uses it; its
    defaults are that file's."""

    batch_size: int = _D["batch_size"]
    seed: int = _D["seed"]
    log_every: int = _D["log_every"]
    checkpoint_every: int = _D["checkpoint_every"]
    keep: int = _D["keep"]


def _resume(method, run_dir: Path, config: dict) -> int:
    """Load the newest checkpoint of `run_dir` into `method`; the step it reached (0 if none)."""
    latest = ckpt_lib.latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
    if latest is None:
        return 0
    saved = ckpt_lib.load_checkpoint(latest, map_location="cpu")
    if saved["config"].get("distill") != config.get("distill"):
        raise ckpt_lib.CheckpointError(
            f"{latest} is a different distillation ({saved['config'].get('distill')}); use a "
            "new hydra.run.dir or the original settings")
    try:
        method.load_state_dict(saved["method"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ckpt_lib.CheckpointError(f"{latest} does not fit this student "
                                       f"({str(e).splitlines()[0]}); use a new hydra.run.dir") \
            from None
    ckpt_lib.set_rng_state(saved["rng"])
    log.info("resumed from %s at step %d", latest, int(saved["step"]))
    return int(saved["step"])


def distill(method, data, *, run_dir, config: dict, settings: DistillSettings,
            steps: int | None = None, info: DistInfo | None = None, logger=None) -> dict:
    """Run `method` (a `sde.distill.base.Distiller`) to `steps` (default its `total_steps`) on
    `data` batches; resume from `run_dir`'s newest checkpoint. Returns the last logged row."""
    if info is None:  # one process, on the device the student is on
        info = DistInfo(device=next(method.student.parameters()).device)
    s, run_dir = settings, Path(run_dir)
    logger, steps = logger or NullLogger(), int(steps or method.total_steps)
    bs = per_rank_batch(s.batch_size, info.world)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    start = _resume(method, run_dir, config)
    metrics = MetricsFile(run_dir, enabled=info.is_main)
    metrics.truncate(start)

    def save(step: int) -> None:
        if info.is_main:
            state = {"model": method.student.state_dict(), "ema": method.ema.state_dict(),
                     "method": method.state_dict(), "rng": ckpt_lib.rng_state(),
                     "config": config}
            log.info("saved %s", ckpt_lib.save_checkpoint(state, run_dir, step, keep=s.keep))
        barrier(info)

    recent, first, tic, last, done = [], start + 1, time.perf_counter(), {}, start
    with _StopFlag() as stop:
        for step in range(start + 1, steps + 1):
            method.student.train()
            x0 = data.batch(step - 1, bs, seed=s.seed, rank=info.rank, world=info.world)
            torch.manual_seed(_seed(s.seed, info.rank, step, DROPOUT_STREAM))  # dropout
            g = step_generator(s.seed, info.rank, step, DISTILL_STREAM)
            row = method.train_step(x0.to(info.device), step, g)
            done = step
            recent.append(row["loss"])
            stopping = _stop_requested(stop, info)
            final = step == steps or stopping
            ckpt_due = s.checkpoint_every > 0 and step % s.checkpoint_every == 0
            if final or ckpt_due or (s.log_every > 0 and step % s.log_every == 0):
                _check_finite(recent, first)
                last = {k: float(all_mean(torch.as_tensor(v, dtype=torch.float32), info))
                        for k, v in row.items()}
                last["loss"] = float(all_mean(torch.stack(recent).mean(), info))
                last["s_per_step"] = (time.perf_counter() - tic) / len(recent)
                metrics.add(last, step)
                metrics.write()
                logger.log(last, step)
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
                recent, first, tic = [], step + 1, time.perf_counter()
            if final or ckpt_due:
                save(step)
            if stopping:
                log.info("stopped by signal %d at step %d; rerun the same command to resume",
                         stop.signum, step)
                break
    logger.finish()
    return {"step": done, **last}
