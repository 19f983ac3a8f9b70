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
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from sde.data import _seed, step_generator
from sde.runs import checkpoint as ckpt_lib
from sde.runs.env import check_bool, check_int, sample_seeds
from sde.runs.figures import save_figure
from sde.runs.files import write_text
from sde.runs.logger import NullLogger
from sde.runs.metrics import MetricsFile
from sde.runs.sampling import generate, split_sampler, to_data_space
from sde.training.distributed import DistInfo, all_mean, barrier, per_rank_batch
from sde.training.ema import EMA
from sde.training.precision import resolve_precision

log = logging.getLogger("sde.train")

LOSS_STREAM, DROPOUT_STREAM, EVAL_STREAM, SAMPLE_STREAM, LABEL_STREAM = 0, 3, 4, 5, 6


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


# TrainSettings field -> its key in the config (the trainer section unless listed here)
OPTIM_KEYS = {"lr": "lr", "betas": "betas", "adam_eps": "eps", "weight_decay": "weight_decay",
              "optimizer": "name", "warmup": "warmup", "grad_clip": "grad_clip"}


def _config_key(name: str) -> str:
    return "seed" if name == "seed" else (
        f"optim.{OPTIM_KEYS[name]}" if name in OPTIM_KEYS else f"trainer.{name}")


def _section_defaults() -> dict:
    """The defaults of conf/trainer/default.yaml, conf/optim/adam.yaml and train.yaml's seed,
    under TrainSettings' field names: the config files are the one place they are written."""
    from sde.runs.paths import config_defaults

    trainer, optim = config_defaults("trainer/default.yaml"), config_defaults("optim/adam.yaml")
    values = {field: optim[key] for field, key in OPTIM_KEYS.items()}
    values.update({k: v for k, v in trainer.items() if k != "device"})
    values["seed"] = config_defaults("train.yaml", "seed")
    values["betas"] = tuple(values["betas"])
    return values


_D = _section_defaults()
_INT_MIN = {"steps": 1, "batch_size": 1, "seed": 0, "warmup": 0, "log_every": 0, "eval_every": 0,
            "eval_batches": 0, "sample_every": 0, "num_samples": 0, "checkpoint_every": 0,
            "keep": 1}
_BOOLS = ("channels_last", "compile", "progress")


@dataclass
class TrainSettings:
    """The `trainer` and `optim` sections as the loop uses them. The defaults are read from
    conf/trainer/default.yaml and conf/optim/adam.yaml (not written here); values are checked
    on construction, a ValueError naming the config key."""

    steps: int = _D["steps"]
    batch_size: int = _D["batch_size"]
    seed: int = _D["seed"]
    lr: float = _D["lr"]
    betas: tuple = _D["betas"]
    adam_eps: float = _D["adam_eps"]
    weight_decay: float = _D["weight_decay"]
    optimizer: str = _D["optimizer"]
    warmup: int = _D["warmup"]
    grad_clip: float = _D["grad_clip"]
    ema_decay: float = _D["ema_decay"]
    log_every: int = _D["log_every"]
    eval_every: int = _D["eval_every"]
    eval_batches: int = _D["eval_batches"]
    sample_every: int = _D["sample_every"]
    num_samples: int = _D["num_samples"]
    checkpoint_every: int = _D["checkpoint_every"]
    keep: int = _D["keep"]
    precision: str = _D["precision"]
    channels_last: bool = _D["channels_last"]
    compile: bool = _D["compile"]
    progress: bool = _D["progress"]
    label_dropout: float = _D["label_dropout"]
    sampler: dict = field(default_factory=lambda: {"name": "pc"})

    def __post_init__(self):
        for name, low in _INT_MIN.items():
            check_int(getattr(self, name), _config_key(name), low)
        for name in _BOOLS:
            check_bool(getattr(self, name), _config_key(name))
        _check_number(self.lr, "optim.lr", low=0.0, strict=True)
        _check_number(self.adam_eps, "optim.eps", low=0.0, strict=True)
        _check_number(self.weight_decay, "optim.weight_decay", low=0.0)
        if self.grad_clip is not None:
            _check_number(self.grad_clip, "optim.grad_clip", low=0.0)
        _check_number(self.ema_decay, "trainer.ema_decay", low=0.0)
        _check_number(self.label_dropout, "trainer.label_dropout", low=0.0)
        if not self.label_dropout <= 1:
            raise ValueError(f"trainer.label_dropout must be in [0, 1], got {self.label_dropout!r}")
        if not self.ema_decay < 1:
            raise ValueError(f"trainer.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        betas = tuple(self.betas) if isinstance(self.betas, Sequence) and not isinstance(
            self.betas, str) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = betas

    @classmethod
    def from_sections(cls, *, trainer: dict, optim: dict, seed: int = 0,
                      sampler: dict | None = None) -> TrainSettings:
        """From the plain `trainer` and `optim` config sections (trainer.device is not the
        loop's business: `init_distributed` uses it)."""
        values = {k: v for k, v in trainer.items() if k != "device"}
        values.update({f: optim[k] for f, k in OPTIM_KEYS.items() if k in optim})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trainer/optim keys {unknown}")
        return cls(**values, seed=seed, sampler=dict(sampler or {"name": "pc"}))


def _check_number(value, key: str, *, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"{key} must be a number {'>' if strict else '>='} {low:g}, got {value!r}")


def make_optimizer(params, s: TrainSettings, device: torch.device) -> torch.optim.Optimizer:
    """Adam (score_sde's choice) or AdamW; fused kernels on CUDA."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if s.optimizer not in kinds:
        raise ValueError(f"unknown optim.name {s.optimizer!r}; choose one of {sorted(kinds)}")
    return kinds[s.optimizer](params, lr=s.lr, betas=tuple(s.betas), eps=s.adam_eps,
                              weight_decay=s.weight_decay, fused=device.type == "cuda" or None)


def due_events(step: int, s: TrainSettings) -> dict:
    """Which of log / eval / sample / ckpt fall on `step` (an interval of 0 turns one off)."""
    return {name: every > 0 and step % every == 0 for name, every in (
        ("log", s.log_every), ("eval", s.eval_every), ("sample", s.sample_every),
        ("ckpt", s.checkpoint_every))}


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warmup to `lr` over `warmup` steps (score_sde's schedule), then constant."""
    return s.lr * min(1.0, step / s.warmup) if s.warmup > 0 else s.lr


def _nonfinite_rows(x: torch.Tensor) -> list[int]:
    """Indices of the examples of a batch (B, ...) holding NaN or Inf."""
    return (~torch.isfinite(x.flatten(1).float())).any(1).nonzero().flatten().tolist()


def uses_batch_statistics(*modules: nn.Module) -> bool:
    """Whether any of `modules` normalises over the batch (BatchNorm), so that one example per
    process leaves its statistics undefined."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for module in modules
               for m in module.modules())


def _check_finite(losses: list, first_step: int, *, batch_of=None, batch_size: int = 0,
                  modules: Sequence[nn.Module] = ()) -> None:
    """Raise `NonFiniteLossError` naming the first step whose loss is not finite, and its cause:
    the data when that step's batch (`batch_of(step)`) holds NaN/Inf, a batch of one when one of
    the trained `modules` takes batch statistics, or else the optimisation (learning rate,
    clipping, precision)."""
    if not losses:
        return
    values = torch.stack(losses).float().cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if not len(bad):
        return
    k = int(bad[0, 0])
    step = first_step + k
    head = f"loss became {values[k].item()} at step {step}"
    rows = _nonfinite_rows(batch_of(step)) if batch_of is not None else []
    if rows:
        raise NonFiniteLossError(
            f"{head}: its training batch holds NaN/Inf (batch rows {rows[:10]}), so the data is "
            "the cause, not the learning rate; clean the data set (NaN/Inf values)")
    if 0 < batch_size < 2 and uses_batch_statistics(*modules):
        raise NonFiniteLossError(
            f"{head} with {batch_size} example per process: the network's batch statistics "
            "(BatchNorm) are undefined over a batch of one; raise trainer.batch_size (it is the "
            "global batch over all processes)")
    raise NonFiniteLossError(
        f"{head} (the batch was finite); lower optim.lr, keep optim.grad_clip, or use "
        "trainer.precision=fp32")


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
    old, new = (c.get("data", {}).get("fingerprint") for c in (saved, config))
    if old is not None and new is not None and old != new:
        raise ckpt_lib.CheckpointError(
            f"{path} was trained on other data of the same shape (data fingerprint {old}, now "
            f"{new}); point data.* at the original data or use a new hydra.run.dir")


def check_labels(model: nn.Module, data, label_dropout: float = 0.0) -> None:
    """Class-conditional data needs a network with `num_classes` equal to the data's; label
    dropout needs labels."""
    wanted, has = getattr(data, "num_classes", None), getattr(model, "num_classes", None)
    if wanted is None and label_dropout > 0:
        raise ValueError(f"trainer.label_dropout={label_dropout:g} drops class labels, but the "
                         "data has none: set data.labels=true (or trainer.label_dropout=0)")
    if wanted is not None and has != wanted:
        raise ValueError(f"data.labels=true gives {wanted} classes but the network has "
                         f"num_classes={has}; set model.num_classes={wanted}")


def step_labels(data, step: int, batch_size: int, *, s: TrainSettings, info: DistInfo,
                dropout: float) -> torch.Tensor:
    """The class labels (B,) of the batch of `step` (1-based), each replaced by the null label
    `num_classes` with probability `dropout` (classifier-free guidance training, Ho & Salimans
    2022, Alg. 1), drawn from the step's own generator (exactly resumable)."""
    y = data.batch_labels(step - 1, batch_size, seed=s.seed, rank=info.rank, world=info.world)
    drop = torch.rand(batch_size, generator=step_generator(s.seed, info.rank, step, LABEL_STREAM))
    return torch.where(drop < dropout, data.num_classes, y).to(info.device)


def labelled_score_fn(get_score_fn, sde, model, labels: torch.Tensor | None):
    """`get_score_fn(sde, model)` with `class_labels=labels` (unchanged when labels is None)."""
    if labels is None:
        return get_score_fn(sde, model)
    return get_score_fn(sde, model, model_kwargs={"class_labels": labels})


@torch.no_grad()
def eval_loss(sde, model, loss_fn, data, get_score_fn, *, s: TrainSettings, info: DistInfo,
              batch_size: int) -> float:
    """Mean loss of `model` on `eval_batches` fixed batches with fixed noise (comparable across
    steps), averaged over ranks."""
    score_fn = get_score_fn(sde, model)
    total = torch.zeros((), device=info.device)
    for k in range(s.eval_batches):
        x = data.batch(k, batch_size, seed=s.seed + 1, rank=info.rank, world=info.world)
        if getattr(data, "labels", None) is not None:  # the true labels, no dropout
            y = data.batch_labels(k, batch_size, seed=s.seed + 1, rank=info.rank,
                                  world=info.world).to(info.device)
            score_fn = labelled_score_fn(get_score_fn, sde, model, y)
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
    precision = resolve_precision(s.precision, dev)
    split_sampler(s.sampler)  # the end-of-training sampler's options, checked before training
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    check_labels(model, data, s.label_dropout)
    conditional = getattr(data, "labels", None) is not None
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
    if info.is_main:  # after the resume check: a refused resume leaves config.yaml as it was
        from omegaconf import OmegaConf

        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    train_model = model
    if info.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if s.compile:
        train_model = torch.compile(train_model)
    score_fn = get_score_fn(sde, train_model)
    metrics = MetricsFile(run_dir, enabled=info.is_main)
    metrics.truncate(start)
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
        """`num_samples` EMA samples with the per-sample seeds of `sde.sample seed=<seed>`."""
        if not info.is_main or s.num_samples <= 0:
            return
        name, options = split_sampler(s.sampler)
        labels = (torch.arange(s.num_samples, device=dev) % data.num_classes  # 0, 1, ..., 9, 0..
                  if conditional else None)
        x, nfe, _ = generate(name, sde, labelled_score_fn(get_score_fn, sde, ema.model_ema,
                                                          labels), data.shape,
                             seeds=sample_seeds(s.seed, s.num_samples), batch_size=s.num_samples,
                             options=options, device=dev, progress=False)
        ref = data.data[:2000] if len(data.shape) == 1 else None
        path = save_figure(to_data_space(x, data.inverse_scaler, data.shape),
                           run_dir / "samples" / f"step_{step:08d}.png", reference=ref,
                           title=f"{config.get('experiment', '')} step {step}")
        if path is not None:
            logger.log_image("samples", path, step, caption=f"step {step}, nfe {nfe:g}")
        log.info("step %d: samples (nfe %g) -> %s", step, nfe, path)

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
            if conditional:  # the loss keeps its signature: the labels ride in score_fn
                score_fn = labelled_score_fn(get_score_fn, sde, train_model, step_labels(
                    data, step, bs, s=s, info=info, dropout=s.label_dropout))
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
            due = due_events(step, s)
            final = step == s.steps or stopping
            if due["log"] or due["ckpt"] or final:
                _check_finite(recent, interval_start + 1, batch_size=bs, modules=(model,),
                              batch_of=lambda k: data.batch(k - 1, bs, seed=s.seed,
                                                            rank=info.rank, world=info.world))
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
