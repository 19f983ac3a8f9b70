"""Hydra entry: draw samples from a trained run (see docs/runs.md).

    python -m sde.sample run=DIR_OR_CKPT sampler=pc n=64 seed=0 batch_size=64 [out=FILE.npz]
    python -m sde.sample run=DIR format=png out_dir=DIR n=50000       # one {seed:06d}.png each
    torchrun --nproc_per_node=K -m sde.sample run=DIR ...             # seeds sharded over ranks
    python -m sde.sample run=DIR label=3 guidance=2 n=64              # class 3 (label=all: each)
    python -m sde.sample run=DIR classifier=CLF label=3 guidance=2    # classifier guidance
    python -m sde.sample run=DIR task=inpaint mask=center n=8 [data.path=IN.npz]  # colorize

Everything (SDE, network, scaler, shape) comes from the checkpoint; `sde.runs.sample_run` does
the work. Sample i uses the per-sample seed seed * 1_000_000 + i (sde.runs.env).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from sde.runs.env import exit_on_error
from sde.runs.paths import CONFIG_DIR


@hydra.main(config_path=str(CONFIG_DIR), config_name="sample", version_base=None)
@exit_on_error("sample")
def main(cfg: DictConfig) -> None:
    from sde.runs.distributed import cleanup, init_distributed
    from sde.runs.sampling import sample_run, split_sampler

    sampler, options = split_sampler(OmegaConf.to_container(cfg.sampler, resolve=True))
    if cfg.task is not None:
        from sde.runs.inverse import inverse_run

        if sampler != "pc":
            raise ValueError(f"task={cfg.task} runs the PC sampler's steps; use sampler=pc, not "
                             f"sampler={sampler}")
        inverse_run(cfg.run, task=cfg.task, mask=cfg.mask, data=cfg.data.path, n=cfg.n, seed=cfg.seed,
                    method=cfg.method, sampler_options=options, out=cfg.out, ema=cfg.ema,
                    device=cfg.device, runs_root=cfg.runs_root)
        return
    info = init_distributed(cfg.device, key="device")
    try:
        sample_run(cfg.run, sampler=sampler, sampler_options=options, n=cfg.n, seed=cfg.seed,
                   batch_size=cfg.batch_size, out=cfg.out, format=cfg.format,
                   out_dir=cfg.out_dir, ema=cfg.ema, device=info.device,
                   runs_root=cfg.runs_root, info=info, progress=cfg.progress,
                   label=cfg.label, guidance=cfg.guidance, classifier=cfg.classifier)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
