"""Hydra entry point: `python -m sde.distill teacher=RUN|oracle:... method=NAME [key=value ...]`.

Composes sde/conf/distill/distill.yaml, builds the teacher and the method, and hands them to
`sde.distill.loop.distill`. Nothing below this file reads the config. Rerunning with the same
`hydra.run.dir` resumes; under `torchrun` each process joins DDP.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from sde.runs.env import exit_on_error
from sde.runs.files import write_text
from sde.runs.paths import CONFIG_DIR

ORACLE_INIT_STEPS = 1500


def run(cfg: DictConfig, run_dir) -> dict:
    """Distil `cfg.teacher` by `cfg.method` into `run_dir` (resuming if it has checkpoints)."""
    from hydra.utils import instantiate

    from sde.distill import DistillSettings, distill, load_teacher, make_distiller
    from sde.runs.logger import attach_file_log, make_logger
    from sde.training.distributed import cleanup, init_distributed

    c = OmegaConf.to_container(cfg, resolve=True)
    if c["method"] not in ("progressive", "consistency", "add"):
        raise ValueError(f"method={c['method']!r}: use progressive, consistency or add")
    run_dir, info = Path(run_dir), init_distributed(c["device"])
    teacher = load_teacher(str(c["teacher"]), sde=instantiate(c["sde"]), device=info.device)
    model = dict(c["model"])
    if teacher.mixture is not None and "dim" in model:
        model["dim"] = int(teacher.mixture.event_shape[0])
    common = dict(c["common"])
    if common["init_steps"] is None:
        common["init_steps"] = ORACLE_INIT_STEPS if teacher.net is None else 0
    method, config = make_distiller(c["method"], teacher, model=model, seed=c["seed"],
                                    info=info, **common, **c[c["method"]])
    config["seed"], config["trainer"] = c["seed"], c["trainer"]
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
        attach_file_log(run_dir)
    logger = make_logger(**c["logger"], run_dir=run_dir, config=config, is_main=info.is_main)
    settings = DistillSettings(seed=c["seed"], **c["trainer"])
    try:
        return distill(method, teacher.data, run_dir=run_dir, config=config, settings=settings,
                       info=info, logger=logger)
    finally:
        cleanup()


@hydra.main(config_path=str(CONFIG_DIR), config_name="distill/distill", version_base="1.3")
@exit_on_error("distill")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
