"""Hydra entry point: `python -m sde.distill teacher=RUN|oracle:... method=NAME [key=value ...]`.

Composes conf/distill/distill.yaml, builds the teacher and the method, and hands them to
`sde.distill.loop.distill`. Nothing below this file reads the config. Rerunning with the same
`hydra.run.dir` resumes; under `torchrun` each process joins DDP.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("sde.distill")
_PKG = Path(__file__).resolve().parent.parent
# sde/conf (the packaged layout) if it holds distill/, else the repository's conf/
CONFIG_DIR = str(next((d for d in (_PKG / "conf", _PKG.parent / "conf") if (d / "distill").is_dir()),
                      _PKG / "conf"))
ORACLE_INIT_STEPS = 1500


def _write_config(run_dir: Path, config: dict) -> None:
    """config.yaml, atomically (temp file + os.replace)."""
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    os.replace(tmp, run_dir / "config.yaml")


def run(cfg: DictConfig, run_dir) -> dict:
    """Distil `cfg.teacher` by `cfg.method` into `run_dir` (resuming if it has checkpoints)."""
    from hydra.utils import instantiate

    from sde.distill import DistillSettings, distill, load_teacher, make_distiller
    from sde.training.distributed import cleanup, init_distributed
    from sde.training.logging import attach_file_log, make_logger

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
        _write_config(run_dir, config)
        attach_file_log(run_dir)
    logger = make_logger(**c["logger"], run_dir=run_dir, config=config, is_main=info.is_main)
    settings = DistillSettings(seed=c["seed"], **c["trainer"])
    try:
        return distill(method, teacher.data, run_dir=run_dir, config=config, settings=settings,
                       info=info, logger=logger)
    finally:
        cleanup()


@hydra.main(config_path=CONFIG_DIR, config_name="distill/distill", version_base="1.3")
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
        print(f"sde.distill: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
