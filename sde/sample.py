"""Hydra entry: draw samples from a trained run.

    python -m sde.sample run=DIR_OR_CKPT sampler=pc n=64 seed=0 batch_size=64 [out=FILE.npz]

Everything (SDE, network, scaler, data shape) comes from the checkpoint (`sde.run.load_run`), EMA
weights unless `ema=false`; `run` defaults to the newest run under `runs_root` (runs/). Writes
`<stem>.npz` (samples in data space, their seeds), `<stem>.png` (image grid, or scatter plot of
2-D data), prints one JSON line (sampler, nfe, seconds, img/s) and appends it to
`<run>/samples.jsonl`. The default stem is `<run>/samples/<sampler>_seed<S>_n<N>`.

Seeds: sample i of a call with `seed=S` draws all its noise from its own generator seeded
`S * 1_000_000 + i` (`sample_seeds`), so `n=64` is a prefix of `n=128` and samples do not
depend on the batch size, except where a sampler couples the batch: the `langevin` corrector of
`pc` (its step size averages norms over the batch, as score_sde) and the `ode` solver (one
adaptive step size for the whole batch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

SEED_STRIDE = 1_000_000


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-sample seeds of a call with `seed`: seed * 1_000_000 + i for i < n (see module doc)."""
    if n > SEED_STRIDE:
        raise ValueError(f"n={n} exceeds the {SEED_STRIDE} samples one seed covers; split the "
                         "call over seed=S, S+1, ...")
    return [seed * SEED_STRIDE + i for i in range(n)]


def newest_run(runs_root: str | Path) -> Path:
    """The most recently modified run directory (holding checkpoints/) under `runs_root`."""
    root = Path(runs_root)
    ckpts = root.glob("**/checkpoints/ckpt_*.pt") if root.is_dir() else []
    found = [p.parent.parent for p in ckpts]
    if not found:
        raise ValueError(f"no trained run under {root.resolve()}: train one (make train) or pass "
                         "run=DIR_OR_CHECKPOINT")
    return max(set(found), key=lambda p: max(c.stat().st_mtime for c in p.glob("checkpoints/*")))


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def resolve_run(run: str | None, runs_root: str | Path = "runs") -> Path:
    """`run` (a run directory or checkpoint) checked to exist, or the newest run."""
    if run is None or str(run) == "":
        return newest_run(runs_root)
    path = Path(run).expanduser()
    if not path.exists():
        raise ValueError(f"run={run}: no such run directory or checkpoint file (a run directory "
                         "is runs/<experiment>/<timestamp>/ with checkpoints/ckpt_<step>.pt)")
    if path.is_dir() and not any((path / "checkpoints").glob("ckpt_*.pt")):
        raise ValueError(f"run={run}: no checkpoints/ckpt_<step>.pt in this directory; is it a "
                         "run directory of sde.train?")
    return path


@torch.no_grad()
def generate(sampler_fn, sde, score_fn, shape, *, n: int, seed: int, batch_size: int,
             device=None, progress: bool = True, **sampler_kwargs):
    """n samples in model space (n, *shape) on the CPU, with per-sample seeds (`sample_seeds`),
    in batches of `batch_size` -> (x, nfe per sample path, seconds)."""
    from tqdm import tqdm

    from sde.utils import PerSampleGenerator

    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    seeds = sample_seeds(seed, n)
    gen_device = torch.device(device or "cpu")
    out, nfes, start = [], [], time.perf_counter()
    for first in tqdm(range(0, n, batch_size), desc="sampling", unit="batch", disable=not progress):
        batch_seeds = seeds[first:first + batch_size]
        generator = PerSampleGenerator(batch_seeds, device=gen_device)
        x, nfe = sampler_fn(sde, score_fn, (len(batch_seeds), *shape), generator=generator,
                            device=device, **sampler_kwargs)
        out.append(x.detach().float().cpu())
        nfes.append(nfe)
    if gen_device.type == "cuda":
        torch.cuda.synchronize(gen_device)
    return torch.cat(out), float(np.mean(nfes)), time.perf_counter() - start


def is_image_shape(shape) -> bool:
    return len(shape) == 3


def to_data_space(x: torch.Tensor, inverse_scaler, shape) -> torch.Tensor:
    """Model space -> data space; images are clipped to [0, 1]."""
    y = inverse_scaler(x)
    return y.clamp(0, 1) if is_image_shape(shape) else y


def save_samples(samples: torch.Tensor, seeds, out: str | Path, *, title: str = "") -> dict:
    """Write `out` (.npz: samples, seeds) and the figure next to it (.png) -> their paths."""
    from sde.training.samples import save_image_grid, save_scatter

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, samples=samples.numpy(), seeds=np.asarray(seeds, dtype=np.int64))
    png = out.with_suffix(".png")
    if is_image_shape(samples.shape[1:]):
        save_image_grid(samples[:256], png)
    elif samples[0].numel() >= 2:
        save_scatter(samples.flatten(1)[:, :2], png, title=title)
    else:
        png = None
    return {"npz": str(out), "png": str(png) if png else None}


def sampler_call(sampler_cfg: dict):
    """(sampler function, its keyword arguments) from a `conf/sampler/*.yaml` section: `name`
    picks the function of `sde.sampling.get_sampler`, every other key is its keyword argument."""
    from sde.sampling.registry import get_sampler

    kwargs = dict(sampler_cfg)
    return get_sampler(kwargs.pop("name")), kwargs


def log_line(record: dict, run_dir: Path) -> None:
    """Print the JSON record and append it to <run>/samples.jsonl."""
    line = json.dumps(record)
    print(line, flush=True)
    with open(run_dir / "samples.jsonl", "a") as f:
        f.write(line + "\n")


def default_device(device):
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def sample_run(*, run, sampler: dict, n: int, seed: int, batch_size: int, out=None,
               ema: bool = True, device=None, runs_root="runs", progress: bool = True) -> dict:
    """Load a run, sample, write the files; the JSON record (also appended to samples.jsonl)."""
    path = resolve_run(run, runs_root)  # a bad path fails before anything is imported
    from sde.run import load_run

    device = default_device(device)
    loaded = load_run(path, ema=ema, device=device)
    shape = tuple(loaded.config["data"]["shape"])
    fn, kwargs = sampler_call(sampler)
    x, nfe, seconds = generate(fn, loaded.sde, loaded.score_fn, shape, n=n, seed=seed,
                               batch_size=batch_size, device=device, progress=progress, **kwargs)
    run_dir = run_dir_of(path)
    out = Path(out) if out else run_dir / "samples" / f"{sampler['name']}_seed{seed}_n{n}.npz"
    samples = to_data_space(x, loaded.inverse_scaler, shape)
    files = save_samples(samples, sample_seeds(seed, n), out,
                         title=f"{sampler['name']}, NFE {nfe:g}")
    record = {"run": str(path), "sampler": sampler["name"], "n": n, "seed": seed,
              "batch_size": batch_size, "nfe": nfe, "seconds": round(seconds, 3),
              "img_per_s": round(n / seconds, 3), "device": str(device), **files}
    log_line(record, run_dir)
    return record


def _main(cfg) -> None:
    from omegaconf import OmegaConf

    sample_run(run=cfg.run, sampler=OmegaConf.to_container(cfg.sampler, resolve=True), n=cfg.n,
               seed=cfg.seed, batch_size=cfg.batch_size, out=cfg.out, ema=cfg.ema,
               device=cfg.device, runs_root=cfg.runs_root, progress=cfg.progress)


def exit_on_error(fn):
    """Run an entry point, turning a ValueError / FileNotFoundError (bad run path, missing
    weights, bad option) into its message on stderr and exit status 2, without a traceback."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def main() -> None:
    import hydra

    hydra.main(config_path=CONF_DIR, config_name="sample", version_base=None)(
        exit_on_error(_main))()


if __name__ == "__main__":
    main()
