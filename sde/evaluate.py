"""Hydra entry: evaluate a trained run and record the results in <run>/metrics.json.

    python -m sde.evaluate run=DIR metrics=[bpd,nll,fid,kid,is,toy] [data=...] [logger=none]

Metrics (default: `bpd` for image data, `nll` and `toy` for 2-D data, `nll` for other
continuous data):

- `bpd`: bits/dim of the test split of 8-bit (or `levels`-level) images through the
  probability-flow ODE (`sde.likelihood`), with uniform dequantization y = (k + u) / levels,
  `eval.repeats` draws of u, and the offset log2(levels) - log2|dx/dy| (7 bits for centered 8-bit
  data, as score_sde); an upper bound on the discrete model's bits/dim.
- `nll`: continuous data (toy sets, `data=npz`): -log p(x) in nats per example in data space
  (model-space density plus the scaler's log-determinant), no dequantization.
- `fid`, `kid`, `is`: `eval.n` samples (per-sample seeds `seed * 1_000_000 + i`, as `sde.sample`)
  against the training split, Inception of `eval.inception_weights` (see `sde.metrics.fid`);
  reference statistics cached next to the data. Full protocol: eval.n=50000 seed=0.
- `toy`: energy distance and RBF-MMD^2 of `eval.n` samples to held-out data, and figures in
  <run>/eval/: scatter plot, density heatmap from the likelihood, sampler trajectories.

The defaults (eval.n, eval.bpd_n) are small enough for a CPU; see notes/readme_eval.md.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from sde.sample import (
    CONF_DIR,
    default_device,
    exit_on_error,
    generate,
    resolve_run,
    run_dir_of,
    sampler_call,
    to_data_space,
)

METRICS = ("bpd", "nll", "fid", "kid", "is", "toy")
IMAGE_METRICS = ("fid", "kid", "is")


# --- which metrics -----------------------------------------------------------------------------
def is_image_data(data_cfg: dict) -> bool:
    return data_cfg.get("levels") is not None


def default_metrics(data_cfg: dict) -> list[str]:
    """bpd for images; nll and toy (two-sample distances, figures) for 2-D data; else nll."""
    if is_image_data(data_cfg):
        return ["bpd"]
    return ["nll", "toy"] if list(data_cfg.get("shape") or []) == [2] else ["nll"]


def check_metrics(metrics, data_cfg: dict) -> list[str]:
    """The requested metrics, checked against what the data supports."""
    metrics = list(metrics) if metrics else default_metrics(data_cfg)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    images = is_image_data(data_cfg)
    if "bpd" in metrics and not images:
        raise ValueError(f"bpd needs quantized image data; data={data_cfg['name']} is "
                         "continuous: use metrics=[nll]")
    if "nll" in metrics and images:
        raise ValueError(f"data={data_cfg['name']} is image data: use metrics=[bpd]")
    if any(m in IMAGE_METRICS for m in metrics) and not images:
        raise ValueError(f"fid/kid/is need images; data={data_cfg['name']} is continuous: "
                         "use metrics=[toy] (energy distance, MMD)")
    return metrics


# --- data --------------------------------------------------------------------------------------
def load_split(data_cfg: dict, *, train: bool, n: int | None = None) -> torch.Tensor:
    """Raw examples of a split: CIFAR-10's test batch or the 297 held-out digits for train=False;
    for toy sets a held-out draw (seed + 1). Sets without a split (folder, npz) return all their
    data."""
    from sde.data import load_source, toy

    accepted = inspect.signature(load_source).parameters
    options = {k: v for k, v in data_cfg.items() if k in accepted and k != "name"}
    options["train"] = train
    if data_cfg["name"] in toy.TOY_SETS:
        options["seed"] = int(options.get("seed") or 0) + (0 if train else 1)
        options["n"] = n or options.get("n", 100_000)
    raw = load_source(data_cfg["name"], **options)
    return raw[:n] if n else raw


def data_dir(data_cfg: dict) -> Path:
    """Where the data lives (for cached statistics): data.root, the folder of data.path, or
    ~/.cache/sde for bundled and generated sets."""
    if data_cfg.get("root"):
        return Path(data_cfg["root"]).expanduser()
    if data_cfg.get("path"):
        return Path(data_cfg["path"]).expanduser().parent
    return Path("~/.cache/sde").expanduser()


# --- likelihood --------------------------------------------------------------------------------
def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from (seed, repeat, batch)."""
    seed = np.random.SeedSequence(list(parts)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(seed))


def likelihood_metric(loaded, raw: torch.Tensor, data_cfg: dict, *, batch_size: int, repeats: int,
                      hutchinson: str, rtol: float, atol: float, eps: float, seed: int, device,
                      progress: bool = True) -> dict:
    """`bpd` (images) or `nll` (continuous data) averaged over `raw` and `repeats` draws of the
    dequantization noise and Hutchinson probes; also its standard error and the mean NFE."""
    from tqdm import tqdm

    from sde.likelihood import bits_per_dim, dequantize, log_likelihood
    from sde.metrics.toy import affine_log_det

    images = is_image_data(data_cfg)
    dim = int(np.prod(raw.shape[1:]))
    log_det = affine_log_det(loaded.scaler, dim)  # log |dx/dy| over all dims
    if images:
        n_bits, centered = math.log2(data_cfg["levels"]), bool(data_cfg.get("centered", True))
        if not math.isclose(log_det / dim, math.log(2.0) if centered else 0.0, abs_tol=1e-6):
            raise ValueError("bpd assumes the scaler y -> 2y - 1 (centered) or y -> y")
    if hutchinson == "auto":
        hutchinson = "exact" if dim <= 16 else "rademacher"
    values, nfes = [], []
    jobs = [(r, b, batch) for r in range(repeats) for b, batch in enumerate(raw.split(batch_size))]
    for r, b, batch in tqdm(jobs, desc="bpd" if images else "nll", disable=not progress):
        g = _generator(seed, r, b)
        y = dequantize(batch, g, centered=False, n_bits=n_bits) if images else batch.double()
        x = loaded.scaler(y).float().to(device)  # (B, ...) in model space
        logp, _, nfe = log_likelihood(loaded.sde, loaded.score_fn, x, hutchinson=hutchinson,
                                      rtol=rtol, atol=atol, eps=eps, generator=g)
        logp = logp.double().cpu()
        values.append(bits_per_dim(logp, dim, centered=centered, n_bits=n_bits) if images
                      else -(logp + log_det))
        nfes.append(nfe)
    v = torch.cat(values)
    key = "bpd" if images else "nll"
    return {key: float(v.mean()), f"{key}_sem": float(v.std() / math.sqrt(len(v))),
            f"{key}_n": int(len(raw)), f"{key}_repeats": repeats,
            f"{key}_nfe": float(np.mean(nfes))}


# --- samples -----------------------------------------------------------------------------------
def draw_samples(loaded, sampler: dict, *, n: int, seed: int, batch_size: int, device,
                 score_fn=None, progress: bool = True) -> tuple[torch.Tensor, float]:
    """n samples in data space (images clipped to [0, 1]) and the NFE per sample."""
    shape = tuple(loaded.config["data"]["shape"])
    fn, kwargs = sampler_call(sampler)
    x, nfe, _ = generate(fn, loaded.sde, score_fn or loaded.score_fn, shape, n=n, seed=seed,
                         batch_size=batch_size, device=device, progress=progress, **kwargs)
    return to_data_space(x, loaded.inverse_scaler, shape), nfe


def image_quality(samples: torch.Tensor, net, data_cfg: dict, *, metrics, weights: str,
                  reference_stats: str | None, batch_size: int, device, kid_subsets: int,
                  kid_subset_size: int, is_splits: int, progress: bool = True) -> dict:
    """FID / KID / IS of samples (N, C, H, W) in [0, 1] against the training split."""
    from sde.metrics.fid import batched, extract_features, image_metrics, reference_statistics

    reference = load_split(data_cfg, train=True).float() / (data_cfg["levels"] - 1)
    h, w = reference.shape[-2:]
    cache = Path(reference_stats) if reference_stats else (
        data_dir(data_cfg) / f"fid_stats_{data_cfg['name']}_{h}x{w}_train.npz")
    key = f"{Path(weights).name}:{Path(weights).stat().st_size}"
    stats = reference_statistics(lambda: batched(reference, batch_size), cache, net=net, key=key,
                                 device=device, progress=progress)
    feats, logits = extract_features(net, batched(samples, batch_size), device=device,
                                     progress=progress)
    out = image_metrics(feats, logits, stats, metrics=metrics, kid_subsets=kid_subsets,
                        kid_subset_size=kid_subset_size, is_splits=is_splits)
    return {**out, "reference_stats": str(cache)}


def toy_figures(loaded, held_out: torch.Tensor, samples: torch.Tensor, out_dir: Path, *,
                sampler: dict, seed: int, resolution: int, trajectories: int, rtol: float,
                atol: float, eps: float, device) -> dict:
    """Scatter, likelihood heatmap and sampler trajectories of 2-D data in `out_dir`."""
    from sde.likelihood import log_likelihood
    from sde.metrics.toy import (
        RecordingScore,
        affine_log_det,
        density_grid,
        save_density,
        save_trajectories,
    )
    from sde.training.samples import save_scatter

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"scatter": save_scatter(samples, out_dir / "samples.png", reference=held_out)}
    log_det = affine_log_det(loaded.scaler, 2)
    log_prob = lambda p: log_likelihood(
        loaded.sde, loaded.score_fn, loaded.scaler(p).float().to(device), hutchinson="exact",
        rtol=rtol, atol=atol, eps=eps)[0].double().cpu() + log_det
    lim = 1.2 * float(held_out.abs().max())
    logp, extent = density_grid(log_prob, lim=lim, resolution=resolution)
    files["density"] = save_density(logp, extent, out_dir / "density.png", title="model density")
    rec = RecordingScore(loaded.score_fn, keep=trajectories)
    final, _ = draw_samples(loaded, sampler, n=trajectories, seed=seed, batch_size=trajectories,
                            device=device, score_fn=rec, progress=False)
    paths = loaded.inverse_scaler(rec.trajectories())
    paths = torch.cat([paths, final.flatten(1)[:, None]], dim=1)  # (K, steps + 1, 2)
    files["trajectories"] = save_trajectories(paths, out_dir / "trajectories.png",
                                              title=f"{sampler['name']} trajectories")
    return {f"{k}_png": str(v) for k, v in files.items()}


# --- results -----------------------------------------------------------------------------------
def record_metrics(run_dir: Path, values: dict, details: dict) -> dict:
    """Merge `values` into metrics.json's "eval" entry and append an "eval_history" row."""
    path = run_dir / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("eval", {}).update(values)
    data.setdefault("eval_history", []).append({**values, **details})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return data


def log_to_wandb(values: dict, *, logger: dict, run_dir: Path, step, config: dict) -> None:
    """Log the numeric values under eval/ with the `logger` config section (backend wandb or
    none), as a W&B run named eval/<run dir name> in the group "eval"."""
    from sde.training.logging import make_logger

    options = dict(logger)
    options.setdefault("backend", "none")
    if options["backend"] == "wandb":
        options["name"] = options.pop("run_name", None) or f"eval/{run_dir.name}"
        options["group"] = options.get("group") or "eval"
    lg = make_logger(**options, run_dir=run_dir, config=config)
    numeric = {f"eval/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
    lg.log(numeric, step=step or 0)
    lg.finish()


# --- the entry point ---------------------------------------------------------------------------
def sample_metrics(loaded, metrics, data_cfg: dict, *, ev: dict, sampler: dict, seed: int,
                   net, run_dir: Path, device, progress: bool) -> dict:
    """fid/kid/is and toy metrics, from eval.n samples drawn with `sampler`."""
    from sde.metrics.toy import sample_distances

    samples, nfe = draw_samples(loaded, sampler, n=ev["n"], seed=seed,
                                batch_size=ev["batch_size"], device=device, progress=progress)
    values: dict = {"sampler": sampler["name"], "sample_n": ev["n"], "sample_nfe": nfe}
    if any(m in IMAGE_METRICS for m in metrics):
        values.update(image_quality(
            samples, net, data_cfg, metrics=metrics, weights=ev["inception_weights"],
            reference_stats=ev["reference_stats"], batch_size=ev["batch_size"], device=device,
            kid_subsets=ev["kid_subsets"], kid_subset_size=ev["kid_subset_size"],
            is_splits=ev["is_splits"], progress=progress))
    if "toy" in metrics:
        held_out = load_split(data_cfg, train=False, n=ev["n"])
        values.update(sample_distances(samples, held_out))
        if tuple(samples.shape[1:]) == (2,):
            values.update(toy_figures(
                loaded, held_out, samples, run_dir / "eval", sampler=sampler, seed=seed,
                resolution=ev["resolution"], trajectories=ev["trajectories"], rtol=ev["rtol"],
                atol=ev["atol"], eps=ev["likelihood_eps"], device=device))
    return values


def evaluate_run(*, run, metrics, sampler: dict, ev: dict, data=None, logger=None, seed: int = 0,
                 device=None, runs_root="runs", progress: bool = True) -> dict:
    """Evaluate a run (see the module docstring); the values, also merged into metrics.json."""
    path = resolve_run(run, runs_root)  # a bad path fails before anything is imported
    from sde.metrics.inception import load_inception
    from sde.run import load_run

    device = default_device(device)
    loaded = load_run(path, ema=ev.get("ema", True), device=device)
    given = {k: v for k, v in (data or {}).items() if v is not None}
    data_cfg = {**loaded.config["data"], **given}
    metrics = check_metrics(metrics, data_cfg)
    net = None
    if any(m in IMAGE_METRICS for m in metrics):  # fail on missing weights before any work
        net = load_inception(ev["inception_weights"], device=device)
    run_dir, start, values = run_dir_of(path), time.perf_counter(), {}
    if "bpd" in metrics or "nll" in metrics:
        raw = load_split(data_cfg, train=False, n=ev["likelihood_n"])
        values.update(likelihood_metric(
            loaded, raw, data_cfg, batch_size=ev["batch_size"], repeats=ev["repeats"],
            hutchinson=ev["hutchinson"], rtol=ev["rtol"], atol=ev["atol"],
            eps=ev["likelihood_eps"], seed=seed, device=device, progress=progress))
    if any(m in IMAGE_METRICS or m == "toy" for m in metrics):
        values.update(sample_metrics(loaded, metrics, data_cfg, ev=ev, sampler=sampler, seed=seed,
                                     net=net, run_dir=run_dir, device=device, progress=progress))
    step = loaded.step
    details = {"checkpoint_step": step, "seed": seed, "metrics": metrics,
               "seconds": round(time.perf_counter() - start, 2),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record_metrics(run_dir, values, details)
    log_to_wandb(values, logger=logger or {"backend": "none"}, run_dir=run_dir, step=step,
                 config={"eval": ev, "sampler": sampler, "metrics": metrics})
    print(json.dumps({"run": str(path), **values, **details}), flush=True)
    return values


def _main(cfg) -> None:
    from omegaconf import OmegaConf

    plain = lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else None
    evaluate_run(run=cfg.run, metrics=plain(cfg.metrics), sampler=plain(cfg.sampler),
                 ev=plain(cfg.eval), data=plain(cfg.get("data")), logger=plain(cfg.get("logger")),
                 seed=cfg.seed, device=cfg.device, runs_root=cfg.runs_root, progress=cfg.progress)


def main() -> None:
    import hydra

    hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base=None)(
        exit_on_error(_main))()


if __name__ == "__main__":
    main()
