"""Hydra entry: evaluate a trained run and record the results in <run>/metrics.json.

    python -m sde.evaluate run=DIR metrics=[bpd,nll,fid,kid,is,toy] [data=...] [logger=none]
    torchrun --nproc_per_node=K -m sde.evaluate run=DIR metrics=[fid] eval.n=50000

The metrics, their protocol and defaults: `sde.runs.evaluate` and docs/runs.md; the `eval`
section is `sde.runs.evaluate.EvalOptions`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from sde.runs.env import exit_on_error
from sde.runs.paths import CONFIG_DIR


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base=None)
@exit_on_error("evaluate")
def main(cfg: DictConfig) -> None:
    from sde.runs.distributed import cleanup, init_distributed
    from sde.runs.evaluate import evaluate_run
    from sde.runs.sampling import split_sampler

    plain = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    sampler, options = split_sampler(plain(cfg.sampler))
    info = init_distributed(cfg.device, key="device")
    try:
        evaluate_run(cfg.run, metrics=plain(cfg.metrics), sampler=sampler,
                     sampler_options=options, data=plain(cfg.get("data")),
                     logger=plain(cfg.get("logger")), seed=cfg.seed, device=info.device,
                     runs_root=cfg.runs_root, info=info, progress=cfg.progress,
                     **plain(cfg.eval))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
