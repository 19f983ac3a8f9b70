"""The training loop: weighted DSM with EMA, warmup, clipping, checkpoints, samples and logs.

Every random draw of step k (the batch, its flips and dequantization noise, the loss's times and
noise, dropout) comes from generators seeded by (seed, rank, k), so a run resumed from a
checkpoint at step k reproduces the uninterrupted run's losses exactly (on CPU; GPU kernels may
be non-deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sde.data import _seed, step_generator
from sde.training import checkpoint as ckpt_lib
from sde.training.distributed import DistInfo, all_mean, barrier, per_rank_batch
from sde.training.ema import EMA
from sde.training.logging import MetricsFile, NullLogger
from sde.training.precision import resolve_precision
from sde.training.samples import draw_samples, save_samples

log = logging.getLogger("sde.train")

LOSS_STREAM, DROPOUT_STREAM, EVAL_STREAM, SAMPLE_STREAM = 0, 3, 4, 5


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainSettings:
    """The `trainer` and `optim` sections, as the loop uses them (see conf/trainer, conf/optim)."""

    steps: int = 1000
    batch_size: int = 128
    seed: int = 0
    lr: float = 2e-4
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    optimizer: str = "adam"
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 2
    sample_every: int = 5000
    num_samples: int = 64
    checkpoint_every: int = 10000
    keep: int = 3
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    progress: bool = True
    sampler: dict = field(default_factory=lambda: {"name": "pc"})


def make_optimizer(params, s: TrainSettings, device: torch.device) -> torch.optim.Optimizer:
    """Adam (score_sde's choice) or AdamW; fused kernels on CUDA."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if s.optimizer not in kinds:
        raise ValueError(f"unknown optim.name {s.optimizer!r}; choose one of {sorted(kinds)}")
    return kinds[s.optimizer](params, lr=s.lr, betas=tuple(s.betas), eps=s.adam_eps,
                              weight_decay=s.weight_decay, fused=device.type == "cuda" or None)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to `lr` over `warmup` steps (score_sde's schedule), then constant."""
    return s.lr * min(1.0, step / s.warmup) if s.warmup > 0 else s.lr


def _check_finite(losses: list, first_step: int) -> None:
    """Raise `NonFiniteLossError` naming the first step whose loss is not finite."""
    if not losses:
        return
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        k = int(bad[0, 0])
        raise NonFiniteLossError(
            f"loss became {values[k].item()} at step {first_step + k}; lower optim.lr, "
            "keep optim.grad_clip, or use trainer.precision=fp32")


class _StopFlag:
    """Set by SIGTERM / SIGINT so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check_resume(saved: dict, config: dict, path) -> None:
    """A checkpoint of a different model/SDE/data in this run directory is an error."""
    for key in ("sde", "model", "score"):
        if saved.get(key) != config.get(key):
            raise ckpt_lib.CheckpointError(
                f"{path} was trained with a different `{key}` config ({saved.get(key)} vs "
                f"{config.get(key)}); use a new hydra.run.dir or the original settings")
    old, new = saved.get("data", {}).get("shape"), config.get("data", {}).get("shape")
    if old != new:
        raise ckpt_lib.CheckpointError(f"{path} was trained on data shaped {old}, not {new}")


@torch.no_grad()
def eval_loss(sde, model, loss_fn, data, get_score_fn, *, s: TrainSettings, info: DistInfo,
              batch_size: int) -> float:
    """Mean loss of `model` on `eval_batches` fixed batches with fixed noise (comparable across
    steps), averaged over ranks."""
    score_fn = get_score_fn(sde, model)
    total = torch.zeros((), device=info.device)
    for k in range(s.eval_batches):
        x = data.batch(k, batch_size, seed=s.seed + 1, rank=info.rank, world=info.world)
        g = step_generator(s.seed, info.rank, k, EVAL_STREAM, device=info.device)
        total += loss_fn(sde, score_fn, x.to(info.device), generator=g).mean()
    return float(all_mean(total / max(s.eval_batches, 1), info))


def fit(*, sde, model: nn.Module, loss_fn, data, get_score_fn, run_dir, config: dict,
        settings: TrainSettings, info: DistInfo | None = None, logger=None) -> dict:
    """Train `model` on `data` with `loss_fn(sde, score_fn, x, generator=)`; resume from the
    newest checkpoint of `run_dir` if there is one. Returns the last logged metrics.

    `get_score_fn(sde, model)` wraps a network into `score_fn(x, t)`. `config` is the resolved
    config stored in every checkpoint. Rank 0 writes checkpoints, samples, metrics and logs.
    """
    info = info or DistInfo()
    s, dev, run_dir = settings, info.device, Path(run_dir)
    logger = logger or NullLogger()
    bs = per_rank_batch(s.batch_size, info.world)
    precision = resolve_precision(s.precision, dev)  # auto / fallback: sde/training/precision.py
    model = model.to(dev)
    if s.channels_last and len(data.shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, s.ema_decay)
    optimizer = make_optimizer(model.parameters(), s, dev)
    start = 0
    latest = ckpt_lib.latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
    if latest is not None:
        saved = ckpt_lib.load_checkpoint(latest, map_location="cpu")
        _check_resume(saved["config"], config, latest)
        try:
            model.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"])
            optimizer.load_state_dict(saved["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ckpt_lib.CheckpointError(
                f"{latest} does not fit this network/optimizer ({str(e).splitlines()[0]}); "
                "use a new hydra.run.dir") from None
        ckpt_lib.set_rng_state(saved["rng"])
        start = int(saved["step"])
        log.info("resumed from %s at step %d", latest, start)
    train_model = model
    if info.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if s.compile:
        train_model = torch.compile(train_model)
    score_fn = get_score_fn(sde, train_model)
    metrics = MetricsFile(run_dir, enabled=info.is_main)
    metrics.truncate(start)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training %s (%.2fM parameters) on %s x %d, global batch %d, steps %d -> %d, %s",
             type(model).__name__, n_params / 1e6, dev, info.world, s.batch_size, start, s.steps,
             precision)

    def save(step: int) -> None:
        if info.is_main:
            state = {"model": model.state_dict(), "ema": ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "rng": ckpt_lib.rng_state(),
                     "config": config}
            path = ckpt_lib.save_checkpoint(state, run_dir, step, keep=s.keep)
            log.info("saved %s", path)
        barrier(info)

    def sample(step: int) -> None:
        if not info.is_main or s.num_samples <= 0:
            return
        g = step_generator(s.seed, 0, 0, SAMPLE_STREAM, device=dev)
        x, nfe = draw_samples(sde, get_score_fn(sde, ema.model_ema),
                              (s.num_samples, *data.shape), sampler=s.sampler, generator=g,
                              device=dev)
        ref = data.data[:2000] if len(data.shape) == 1 else None
        path = save_samples(x, run_dir / "samples" / f"step_{step:08d}.png",
                            inverse_scaler=data.inverse_scaler, reference=ref,
                            title=f"{config.get('experiment', '')} step {step}")
        logger.log_image("samples", path, step, caption=f"step {step}, nfe {nfe}")
        log.info("step %d: samples (nfe %d) -> %s", step, nfe, path)

    recent, interval_start, tic = [], start, time.perf_counter()
    last: dict = dict(metrics.data["train"])
    grad_norm = torch.zeros((), device=dev)
    bar = _progress(start, s.steps, enabled=s.progress and info.is_main)
    with _StopFlag() as stop:
        for step in range(start + 1, s.steps + 1):
            model.train()
            x = data.batch(step - 1, bs, seed=s.seed, rank=info.rank, world=info.world)
            x = x.to(dev, non_blocking=True)
            if s.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, s)
            torch.manual_seed(_seed(s.seed, info.rank, step, DROPOUT_STREAM))  # dropout
            g = step_generator(s.seed, info.rank, step, LOSS_STREAM, device=dev)
            with autocast:
                loss = loss_fn(sde, score_fn, x, generator=g).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = s.grad_clip if s.grad_clip and s.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            ema.update(model, step)
            recent.append(loss.detach())
            bar.update(1)

            stopping = _stop_requested(stop, info)
            due = {name: every > 0 and step % every == 0 for name, every in (
                ("log", s.log_every), ("eval", s.eval_every), ("sample", s.sample_every),
                ("ckpt", s.checkpoint_every))}
            final = step == s.steps or stopping
            if due["log"] or due["ckpt"] or final:
                _check_finite(recent, interval_start + 1)
                dt = time.perf_counter() - tic
                row = {"loss": float(all_mean(torch.stack(recent).mean(), info)),
                       "lr": lr_at(step, s), "grad_norm": float(grad_norm),
                       "img_per_s": len(recent) * s.batch_size / max(dt, 1e-9)}
                if due["eval"] or final:
                    row["ema_eval_loss"] = eval_loss(
                        sde, ema.model_ema, loss_fn, data, get_score_fn, s=s, info=info,
                        batch_size=bs)
                metrics.add(row, step)
                metrics.write()
                logger.log(row, step)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
                last = {"step": step, **row}
                recent, interval_start, tic = [], step, time.perf_counter()
            if due["ckpt"] or final:
                save(step)
            if due["sample"] or (final and not stopping):
                sample(step)
            if stopping:
                log.info("stopped by signal %d at step %d; rerun the same command with "
                         "hydra.run.dir=%s to resume", stop.signum, step, run_dir)
                break
    bar.close()
    logger.finish()
    return last


def _stop_requested(stop: _StopFlag, info: DistInfo) -> bool:
    """Whether any rank got SIGTERM / SIGINT (all ranks agree, so they stop together)."""
    flag = torch.tensor(float(stop.signum is not None), device=info.device)
    return bool(all_mean(flag, info) > 0) if info.world > 1 else stop.signum is not None


def _progress(start: int, total: int, *, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, dynamic_ncols=True, desc="train")


class _NoBar(contextlib.nullcontext):
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass
