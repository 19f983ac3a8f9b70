"""The autoencoder's training loop (LDM's first stage, Rombach et al. 2022, App. G).

`experiment=ae_digits` / `ae_cifar` (`task: autoencoder`) come here from `sde.train`. It keeps
the score loop's guarantees by reusing its parts (`sde.training.loop`): every random draw of
step k (the batch, the posterior sample, dropout) comes from generators seeded by
(seed, rank, k), so a resumed run reproduces the uninterrupted one exactly; checkpoints are
atomic (`sde.runs.checkpoint`) and also written on SIGTERM / SIGINT; rank 0 logs through
`sde.runs.logger`; under torchrun the autoencoder and the discriminator train with DDP.

A checkpoint holds the usual `model` / `ema` / `optimizer` / `rng` / `config`, plus
`loss` (the learned log-variance and the discriminator) and `optimizer_disc`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from sde.data import _seed, step_generator
from sde.latent.steps import ae_parameters, autoencoder_step
from sde.runs import checkpoint as ckpt_lib
from sde.runs.figures import save_figure
from sde.runs.logger import NullLogger
from sde.runs.metrics import MetricsFile
from sde.training.distributed import DistInfo, all_mean, barrier, per_rank_batch
from sde.training.ema import EMA
from sde.training.loop import (
    DROPOUT_STREAM,
    LOSS_STREAM,
    TrainSettings,
    _check_finite,
    _check_resume,
    _progress,
    _stop_requested,
    _StopFlag,
    due_events,
    lr_at,
    make_optimizer,
)

log = logging.getLogger("sde.train")


class _Trainer:
    """The modules and optimisers of one autoencoder run, with their (de)serialisation."""

    def __init__(self, autoencoder: nn.Module, loss_fn: nn.Module, s: TrainSettings,
                 info: DistInfo):
        dev = info.device
        self.autoencoder, self.loss_fn = autoencoder.to(dev), loss_fn.to(dev)
        self.discriminator = loss_fn.discriminator  # unwrapped, for the state dicts
        self.ema = EMA(self.autoencoder, s.ema_decay)
        self.opt_ae = make_optimizer(ae_parameters(self.autoencoder, loss_fn), s, dev)
        self.opt_disc = (make_optimizer(self.discriminator.parameters(), s, dev)
                         if self.discriminator is not None else None)
        self.train_model = self.autoencoder
        if info.world > 1:  # DDP: gradients averaged over ranks
            ids = [dev.index] if dev.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.autoencoder, device_ids=ids)
            if self.discriminator is not None:
                loss_fn.discriminator = nn.parallel.DistributedDataParallel(
                    self.discriminator, device_ids=ids)

    def optimizers(self) -> list:
        return [o for o in (self.opt_ae, self.opt_disc) if o is not None]

    def state(self, config: dict) -> dict:
        loss = {"logvar": self.loss_fn.logvar.detach().clone()}
        if self.discriminator is not None:
            loss["discriminator"] = self.discriminator.state_dict()
        state = {"model": self.autoencoder.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt_ae.state_dict(), "loss": loss,
                 "rng": ckpt_lib.rng_state(), "config": config}
        if self.opt_disc is not None:
            state["optimizer_disc"] = self.opt_disc.state_dict()
        return state

    def load(self, saved: dict) -> None:
        self.autoencoder.load_state_dict(saved["model"])
        self.ema.load_state_dict(saved["ema"])
        self.opt_ae.load_state_dict(saved["optimizer"])
        with torch.no_grad():
            self.loss_fn.logvar.copy_(saved["loss"]["logvar"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(saved["loss"]["discriminator"])
            self.opt_disc.load_state_dict(saved["optimizer_disc"])


def _resume(trainer: _Trainer, run_dir: Path, config: dict) -> int:
    """Load the newest checkpoint of `run_dir` into `trainer`; the step it was saved at (or 0)."""
    latest = ckpt_lib.latest_checkpoint(run_dir) if (run_dir / "checkpoints").is_dir() else None
    if latest is None:
        return 0
    saved = ckpt_lib.load_checkpoint(latest, map_location="cpu")
    _check_resume(saved["config"], config, latest)
    try:
        trainer.load(saved)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ckpt_lib.CheckpointError(
            f"{latest} does not fit this autoencoder/discriminator ({str(e).splitlines()[0]}); "
            "use a new hydra.run.dir") from None
    ckpt_lib.set_rng_state(saved["rng"])
    log.info("resumed from %s at step %d", latest, int(saved["step"]))
    return int(saved["step"])


@torch.no_grad()
def eval_psnr(autoencoder: nn.Module, data, *, s: TrainSettings, info: DistInfo,
              batch_size: int) -> float:
    """Mean PSNR (dB, images in [-1, 1]) of posterior-mean reconstructions of `eval_batches`
    fixed batches, averaged over ranks."""
    from sde.models.autoencoder import psnr

    total = torch.zeros((), device=info.device)
    for k in range(s.eval_batches):
        x = data.batch(k, batch_size, seed=s.seed + 1, rank=info.rank, world=info.world)
        x = x.to(info.device)
        total += psnr(x, autoencoder(x, sample_posterior=False)[0].clamp(-1, 1)).mean()
    return float(all_mean(total / max(s.eval_batches, 1), info))


@torch.no_grad()
def save_reconstructions(autoencoder: nn.Module, data, path: Path, *, n: int, seed: int,
                         title: str) -> Path | None:
    """A grid of `n` training images (top half) above their reconstructions (bottom half)."""
    x = data.batch(0, n, seed=seed + 1).to(next(autoencoder.parameters()).device)
    x_rec = autoencoder(x, sample_posterior=False)[0]
    images = data.inverse_scaler(torch.cat([x, x_rec]).cpu()).clamp(0, 1)
    return save_figure(images, path, title=title)


def fit_autoencoder(*, autoencoder: nn.Module, loss_fn: nn.Module, data, run_dir,
                    config: dict, settings: TrainSettings, info: DistInfo | None = None,
                    logger=None) -> dict:
    """Train `autoencoder` on `data` with `loss_fn` (an `sde.latent.AutoencoderLoss`); resume
    from the newest checkpoint of `run_dir`. Returns the last logged metrics."""
    info = info or DistInfo()
    s, dev, run_dir = settings, info.device, Path(run_dir)
    logger = logger or NullLogger()
    bs = per_rank_batch(s.batch_size, info.world)
    autoencoder.latent_shape((1, *data.shape))  # channels / size vs the network: one clear error
    trainer = _Trainer(autoencoder, loss_fn, s, info)
    start = _resume(trainer, run_dir, config)
    if info.is_main:
        from omegaconf import OmegaConf

        from sde.runs.files import write_text

        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    metrics = MetricsFile(run_dir, enabled=info.is_main)
    metrics.truncate(start)
    n_params = sum(p.numel() for p in trainer.autoencoder.parameters())
    log.info("training autoencoder %s (%.2fM parameters) on %s x %d, global batch %d, "
             "steps %d -> %d", type(autoencoder).__name__, n_params / 1e6, dev, info.world,
             s.batch_size, start, s.steps)

    def save(step: int) -> None:
        if info.is_main:
            path = ckpt_lib.save_checkpoint(trainer.state(config), run_dir, step, keep=s.keep)
            log.info("saved %s", path)
        barrier(info)

    def batch_of(step: int) -> torch.Tensor:
        return data.batch(step - 1, bs, seed=s.seed, rank=info.rank, world=info.world)

    recent, interval_start, tic = [], start, time.perf_counter()
    last: dict = dict(metrics.data["train"])
    bar = _progress(start, s.steps, enabled=s.progress and info.is_main)
    with _StopFlag() as stop:
        for step in range(start + 1, s.steps + 1):
            trainer.train_model.train()
            trainer.loss_fn.train()
            x = batch_of(step).to(dev, non_blocking=True)
            for opt in trainer.optimizers():
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, s)
            torch.manual_seed(_seed(s.seed, info.rank, step, DROPOUT_STREAM))
            g = step_generator(s.seed, info.rank, step, LOSS_STREAM, device=dev)
            logs = autoencoder_step(trainer.train_model, trainer.loss_fn, x, step,
                                    opt_ae=trainer.opt_ae, opt_disc=trainer.opt_disc, generator=g,
                                    last_layer=trainer.autoencoder.last_layer)
            trainer.ema.update(trainer.autoencoder, step)
            recent.append(logs)
            bar.update(1)

            stopping = _stop_requested(stop, info)
            due = due_events(step, s)
            final = step == s.steps or stopping
            if due["log"] or due["ckpt"] or final:
                row = _summarise(recent, interval_start, bs, batch_of, info,
                                 modules=(trainer.autoencoder, trainer.loss_fn))
                dt = time.perf_counter() - tic
                row.update(lr=lr_at(step, s), img_per_s=len(recent) * s.batch_size / max(dt, 1e-9))
                if due["eval"] or final:
                    row["ema_psnr"] = eval_psnr(trainer.ema.model_ema, data, s=s, info=info,
                                                batch_size=bs)
                metrics.add(row, step)
                metrics.write()
                logger.log(row, step)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
                last = {"step": step, **row}
                recent, interval_start, tic = [], step, time.perf_counter()
            if due["ckpt"] or final:
                save(step)
            if info.is_main and s.num_samples > 0 and (due["sample"] or (final and not stopping)):
                path = save_reconstructions(
                    trainer.ema.model_ema, data, run_dir / "samples" / f"step_{step:08d}.png",
                    n=s.num_samples, seed=s.seed, title=f"{config.get('experiment', '')} {step}")
                if path is not None:
                    logger.log_image("reconstructions", path, step, caption=f"step {step}")
            if stopping:
                log.info("stopped by signal %d at step %d; rerun the same command with "
                         "hydra.run.dir=%s to resume", stop.signum, step, run_dir)
                break
    bar.close()
    logger.finish()
    return last


def _summarise(recent: list[dict], interval_start: int, bs: int, batch_of,
               info: DistInfo, modules=()) -> dict:
    """The mean of each logged quantity over the interval (over ranks); a non-finite loss is
    a `NonFiniteLossError` naming its step and cause (as in the score loop)."""
    _check_finite([r["loss"] for r in recent], interval_start + 1, batch_size=bs,
                  batch_of=batch_of, modules=modules)
    keys = [k for k in recent[-1] if all(k in r for r in recent)]
    row = {k: float(all_mean(torch.stack([torch.as_tensor(r[k], dtype=torch.float32)
                                           .to(info.device) for r in recent]).mean(), info))
           for k in keys}
    return {k: v for k, v in row.items() if math.isfinite(v) or k == "loss"}


def train_autoencoder_run(*, autoencoder, loss_fn, data, settings, run_dir, config: dict,
                          logger_options: dict, info: DistInfo) -> dict:
    """`fit_autoencoder` into `run_dir` with the logger of `logger_options` (rank 0), the
    train.log file and the process-group clean-up of `sde.training.runner.train_run`."""
    from sde.runs.logger import attach_file_log, make_logger
    from sde.training.distributed import cleanup

    run_dir = Path(run_dir)
    if info.is_main:
        attach_file_log(run_dir)
    else:
        log.setLevel(logging.WARNING)
    logger = make_logger(**logger_options, run_dir=run_dir, config=config, is_main=info.is_main)
    try:
        return fit_autoencoder(autoencoder=autoencoder, loss_fn=loss_fn, data=data,
                               run_dir=run_dir, config=config, settings=settings, info=info,
                               logger=logger)
    finally:
        cleanup()
