"""Hydra entry: `python -m sde.train experiment=NAME [key=value ...]` (see docs/runs.md).

Composes sde/conf/train.yaml, builds the SDE, network, loss and data, and hands them to
`sde.training.runner.train_run`. Rerunning with the same `hydra.run.dir` resumes from its newest
checkpoint; under `torchrun` each process joins DDP. Under `-m` a failing point of the sweep is
reported and the others still run (sde.runs.sweep).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sde.runs.env import exit_on_error
from sde.runs.paths import CONFIG_DIR
from sde.runs.sweep import report_failures, run_name, sweep_point


def run(cfg: DictConfig, run_dir) -> dict:
    """Train the experiment `cfg` into `run_dir` (resuming from its checkpoints if any)."""
    if cfg.get("task", "score") == "autoencoder":
        return run_autoencoder(cfg, run_dir)
    if "autoencoder" in cfg.keys() and OmegaConf.is_missing(cfg, "autoencoder"):
        raise ValueError(f"experiment={cfg.experiment} trains on an autoencoder's latents: pass "
                         "autoencoder=RUN, an ae_* run directory (python -m sde.train "
                         "experiment=ae_digits) or a diffusers VAE folder")
    from hydra.utils import instantiate

    from sde.data import Dataset, check_model_input
    from sde.training.distributed import init_distributed
    from sde.training.loop import TrainSettings
    from sde.training.runner import claim_run_dir, train_run

    plain = lambda node: OmegaConf.to_container(node, resolve=True)
    info = init_distributed(cfg.trainer.device)
    settings = TrainSettings.from_sections(trainer=plain(cfg.trainer), optim=plain(cfg.optim),
                                           seed=cfg.seed, sampler=plain(cfg.sampler))
    with claim_run_dir(run_dir, info):
        data = Dataset(**plain(cfg.data))
        if cfg.get("autoencoder"):  # a score model on the frozen autoencoder's latents
            from sde.latent.data import latent_dataset

            data = latent_dataset(data, cfg.autoencoder, cache=bool(cfg.get("cache_latents")),
                                  run_dir=run_dir, seed=cfg.seed, batch_size=cfg.trainer.batch_size,
                                  device=info.device)
        config = plain(cfg)
        config["data"].update(shape=list(data.shape), fingerprint=getattr(data, "fingerprint", None))
        if hasattr(data, "latent_config"):
            config["latent"] = data.latent_config()
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        sde, model, loss_fn = instantiate(cfg.sde), instantiate(cfg.model), instantiate(cfg.loss)
        check_model_input(model, data.shape)  # channels/size vs the network: one clear error
        logger = {**plain(cfg.logger), **run_name(cfg, Path(run_dir))}
        return train_run(sde=sde, model=model, loss_fn=loss_fn, data=data, info=info,
                         score_options=plain(cfg.score), settings=settings, run_dir=run_dir,
                         config=config, logger_options=logger)


def run_autoencoder(cfg: DictConfig, run_dir) -> dict:
    """Train the autoencoder of `cfg` (`task: autoencoder`) into `run_dir` (see
    sde.training.autoencoder)."""
    from hydra.utils import instantiate

    from sde.data import Dataset
    from sde.training.autoencoder import train_autoencoder_run
    from sde.training.distributed import init_distributed
    from sde.training.loop import TrainSettings
    from sde.training.runner import claim_run_dir

    plain = lambda node: OmegaConf.to_container(node, resolve=True)
    info = init_distributed(cfg.trainer.device)
    settings = TrainSettings.from_sections(trainer=plain(cfg.trainer), optim=plain(cfg.optim),
                                           seed=cfg.seed, sampler=plain(cfg.sampler))
    with claim_run_dir(run_dir, info):
        data = Dataset(**plain(cfg.data))
        config = plain(cfg)
        config["data"].update(shape=list(data.shape), fingerprint=getattr(data, "fingerprint", None))
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        autoencoder, loss_fn = instantiate(cfg.model), instantiate(cfg.loss)
        autoencoder.latent_shape((1, *data.shape))  # channels/size vs the network: one clear error
        logger = {**plain(cfg.logger), **run_name(cfg, Path(run_dir))}
        return train_autoencoder_run(autoencoder=autoencoder, loss_fn=loss_fn, data=data,
                                     info=info, settings=settings, run_dir=run_dir,
                                     config=config, logger_options=logger)


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
@exit_on_error("train")
@sweep_point
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    _main()
    report_failures("train")


if __name__ == "__main__":
    main()
