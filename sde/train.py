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
    """Train the experiment `cfg` into `run_dir` (resuming from its checkpoints if any): a score
    model on images or on an autoencoder's latents (`autoencoder=RUN`), a noise-conditional
    classifier (`task: classifier`), or an autoencoder."""
    from hydra.utils import instantiate

    from sde.data import check_model_input
    from sde.latent.data import training_data
    from sde.training.distributed import init_distributed
    from sde.training.loop import TrainSettings
    from sde.training.runner import claim_run_dir, train_run

    plain = lambda node: OmegaConf.to_container(node, resolve=True)
    info = init_distributed(cfg.trainer.device)
    settings = TrainSettings.from_sections(trainer=plain(cfg.trainer), optim=plain(cfg.optim),
                                           seed=cfg.seed, sampler=plain(cfg.sampler))
    with claim_run_dir(run_dir, info):
        config = plain(cfg)
        data = training_data(config, run_dir=run_dir, device=info.device)  # + data.shape, latent
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        logger = {**plain(cfg.logger), **run_name(cfg, Path(run_dir))}
        if cfg.get("task", "score") == "autoencoder":  # experiment=ae_*: LDM's first stage
            from sde.training.autoencoder import train_autoencoder_run as train_ae
            return train_ae(autoencoder=instantiate(cfg.model), loss_fn=instantiate(cfg.loss),
                            data=data, info=info, settings=settings, run_dir=run_dir,
                            config=config, logger_options=logger)
        sde, model, loss_fn = instantiate(cfg.sde), instantiate(cfg.model), instantiate(cfg.loss)
        check_model_input(model, data.shape)  # channels/size vs the network: one clear error
        return train_run(sde=sde, model=model, loss_fn=loss_fn, data=data, info=info,
                         score_options=plain(cfg.score), settings=settings, run_dir=run_dir,
                         config=config, logger_options=logger, task=cfg.get("task", "score"))


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
