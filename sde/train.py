"""Hydra entry point: `python -m sde.train experiment=NAME [key=value ...]`.

Composes conf/train.yaml, instantiates the SDE, network, loss and data, and hands them to
`sde.training.loop.fit`. Nothing below this file reads the config. Rerunning with the same
`hydra.run.dir` resumes from its newest checkpoint; under `torchrun` each process joins DDP.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("sde.train")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def settings_from_config(cfg: DictConfig):
    """The loop's `TrainSettings` from the `trainer`, `optim`, `sampler` sections and `seed`."""
    from sde.training.loop import TrainSettings

    t, o = cfg.trainer, cfg.optim
    return TrainSettings(
        steps=t.steps, batch_size=t.batch_size, seed=cfg.seed, lr=o.lr, betas=tuple(o.betas),
        adam_eps=o.eps, weight_decay=o.weight_decay, optimizer=o.name, warmup=o.warmup,
        grad_clip=o.grad_clip, ema_decay=t.ema_decay, log_every=t.log_every,
        eval_every=t.eval_every, eval_batches=t.eval_batches, sample_every=t.sample_every,
        num_samples=t.num_samples,
        checkpoint_every=t.checkpoint_every, keep=t.keep, precision=t.precision,
        channels_last=t.channels_last, compile=t.compile, progress=t.progress,
        sampler=OmegaConf.to_container(cfg.sampler, resolve=True))


def _wandb_names(run_dir: Path, experiment: str) -> dict:
    """W&B run name and group from Hydra: one group per sweep (multirun) directory."""
    from hydra.core.hydra_config import HydraConfig

    names = {"name": f"{experiment}/{run_dir.name}", "group": None}
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            names = {"name": f"{experiment}/{hc.job.override_dirname or hc.job.num}",
                     "group": Path(hc.sweep.dir).name}
    return names


def run(cfg: DictConfig, run_dir) -> dict:
    """Train the experiment `cfg` into `run_dir` (resuming from its checkpoints if any)."""
    from hydra.utils import instantiate

    from sde.data import Dataset, check_model_input
    from sde.models import get_score_fn
    from sde.training.distributed import cleanup, init_distributed
    from sde.training.logging import attach_file_log, make_logger
    from sde.training.loop import fit

    run_dir = Path(run_dir)
    info = init_distributed(cfg.trainer.device)
    data = Dataset(**OmegaConf.to_container(cfg.data, resolve=True))
    config = OmegaConf.to_container(cfg, resolve=True)
    config["data"]["shape"] = list(data.shape)
    sde = instantiate(cfg.sde)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = instantiate(cfg.model)
    check_model_input(model, data.shape)  # data channels/size vs the network: one clear error
    loss_fn = instantiate(cfg.loss)
    score_options = OmegaConf.to_container(cfg.score, resolve=True)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        attach_file_log(run_dir)
    else:  # only rank 0 logs
        log.setLevel(logging.WARNING)
    logger_options = OmegaConf.to_container(cfg.logger, resolve=True)
    if logger_options.get("backend") == "wandb" and info.is_main:
        names = _wandb_names(run_dir, cfg.experiment)
        logger_options["name"] = logger_options.pop("run_name", None) or names["name"]
        logger_options["group"] = logger_options.get("group") or names["group"]
    logger = make_logger(**logger_options, run_dir=run_dir, config=config, is_main=info.is_main)
    try:
        return fit(sde=sde, model=model, loss_fn=loss_fn, data=data,
                   get_score_fn=functools.partial(get_score_fn, **score_options),
                   run_dir=run_dir, config=config, settings=settings_from_config(cfg),
                   info=info, logger=logger)
    finally:
        cleanup()


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from sde.training.checkpoint import CheckpointError
    from sde.training.loop import NonFiniteLossError

    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except (CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", e)
        print(f"sde.train: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
