"""Evaluating a run: `evaluate_run` (what `python -m sde.evaluate` calls); results are merged
into <run>/metrics.json ("eval", "eval_history"; see sde.runs.metrics).

Metrics (default: `bpd` for image data, `nll` and `toy` for 2-D data, `nll` for other
continuous data):

- `bpd`: bits/dim of the test split of 8-bit (or `levels`-level) images through the
  probability-flow ODE (`sde.likelihood`), with uniform dequantization y = (k + u) / levels,
  `repeats` draws of u, and the offset log2(levels) - log2|dx/dy| (7 bits for centered 8-bit
  data, as score_sde); an upper bound on the discrete model's bits/dim.
- `nll`: continuous data (toy sets, `data=npz`): -log p(x) in nats per example in data space
  (model-space density plus the scaler's log-determinant), no dequantization.
- `fid`, `kid`, `is`: `n` samples (per-sample seeds, as `sde.sample`; sharded over torchrun
  ranks) against the training split, Inception of `inception_weights` (see `sde.metrics.fid`);
  reference statistics cached next to the data. Full protocol: n=50000 seed=0.
- `latent_nll` (latent runs, `experiment=ldm_*`; their default): the likelihood of the scaled
  latents, not of the images. `latent_nll` is -log p(z) in nats per example, z = s (mean of
  q(z | x) - shift) for the held-out images x, through the probability-flow ODE in latent space;
  `latent_bpd` = latent_nll / (latent dims x ln 2), bits per latent dimension. Neither is a bound
  on the images' likelihood (the decoder's p(x | z) is not counted): never compare them with a
  pixel-space `bpd`, which latent runs refuse. `fid`/`kid`/`is` score the decoded images.
- `toy`: energy distance and RBF-MMD^2 of `n` samples to held-out data, and figures in
  <run>/eval/: scatter plot, density heatmap from the likelihood, sampler trajectories.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sde.runs.distributed import DistInfo, gather_to_main
from sde.runs.env import check_int, resolve_device, stream_generator
from sde.runs.files import check_writable
from sde.runs.paths import RUNS_ROOT, config_defaults, resolve_run, run_dir_of
from sde.runs.sampling import draw_samples

METRICS = ("bpd", "nll", "fid", "kid", "is", "toy", "latent_nll")
IMAGE_METRICS = ("fid", "kid", "is")
HUTCHINSON = ("auto", "exact", "rademacher", "gaussian")


_EVAL = config_defaults("evaluate.yaml", "eval")  # the defaults, written once: in the config


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The `eval` section of conf/evaluate.yaml, checked (a ValueError names the bad key); its
    defaults are that file's (inception_weights: $SDE_INCEPTION_WEIGHTS at import, else None)."""

    ema: bool = _EVAL["ema"]
    batch_size: int = _EVAL["batch_size"]
    likelihood_n: int | None = _EVAL["likelihood_n"]  # None: the whole split
    repeats: int = _EVAL["repeats"]
    hutchinson: str = _EVAL["hutchinson"]
    rtol: float = _EVAL["rtol"]
    atol: float = _EVAL["atol"]
    likelihood_eps: float = _EVAL["likelihood_eps"]
    n: int = _EVAL["n"]
    inception_weights: str | None = _EVAL["inception_weights"]
    inception_preprocessing: str = _EVAL["inception_preprocessing"]
    reference_stats: str | None = _EVAL["reference_stats"]
    kid_subsets: int = _EVAL["kid_subsets"]
    kid_subset_size: int = _EVAL["kid_subset_size"]
    is_splits: int = _EVAL["is_splits"]
    resolution: int = _EVAL["resolution"]
    trajectories: int = _EVAL["trajectories"]

    def __post_init__(self):
        positive = ("batch_size", "repeats", "n", "kid_subsets", "kid_subset_size", "is_splits",
                    "resolution", "trajectories")
        for key in positive + ("likelihood_n",):
            value = getattr(self, key)
            if key == "likelihood_n" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"eval.{key} must be an integer >= 1, got {value!r}"
                                 + (" (null: the whole split)" if key == "likelihood_n" else ""))
        for key in ("rtol", "atol", "likelihood_eps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"eval.{key} must be a number > 0, got {value!r}")
        if not isinstance(self.ema, bool):
            raise ValueError(f"eval.ema must be true or false, got {self.ema!r}")
        if self.hutchinson not in HUTCHINSON:
            raise ValueError(f"eval.hutchinson={self.hutchinson!r}; choose from {list(HUTCHINSON)}")
        from sde.metrics.inception import PREPROCESSING

        if self.inception_preprocessing not in PREPROCESSING:
            raise ValueError(f"eval.inception_preprocessing={self.inception_preprocessing!r}; "
                             f"choose from {sorted(PREPROCESSING)} (docs/evaluation.md)")

    @classmethod
    def of(cls, options: Mapping) -> EvalOptions:
        """From a mapping; unknown keys are a ValueError listing the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown eval keys {unknown}; known: {sorted(known)}")
        return cls(**options)


# --- which metrics -----------------------------------------------------------------------------
def is_image_data(data_cfg: Mapping) -> bool:
    return data_cfg.get("levels") is not None


def default_metrics(data_cfg: Mapping, *, latent: bool = False) -> list[str]:
    """bpd for images; nll and toy (two-sample distances, figures) for 2-D data; else nll;
    latent_nll for latent runs."""
    if latent:
        return ["latent_nll"]
    if is_image_data(data_cfg):
        return ["bpd"]
    return ["nll", "toy"] if list(data_cfg.get("shape") or []) == [2] else ["nll"]


def check_metrics(metrics, data_cfg: Mapping, *, latent: bool = False) -> list[str]:
    """The requested metrics, checked against what the data (and a latent run) supports."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.strip("[]").split(",") if m.strip()]
    metrics = list(metrics) if metrics else default_metrics(data_cfg, latent=latent)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if latent and ("bpd" in metrics or "nll" in metrics):
        raise ValueError("this is a latent run: its likelihood is of the latents, not of the "
                         "images; use metrics=[latent_nll] (latent_nll, latent_bpd) and fid")
    if "latent_nll" in metrics and not latent:
        raise ValueError("latent_nll applies to latent runs (experiment=ldm_*); use bpd or nll")
    if latent:
        return metrics
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
def load_split(data_cfg: Mapping, *, train: bool, n: int | None = None) -> torch.Tensor:
    """Raw examples of a split: CIFAR-10's test batch or the 297 held-out digits for train=False;
    for toy sets a held-out draw (seed + 1). Sets without a split (folder, npz) return all their
    data."""
    from sde.data import GENERATED_SOURCES, load_source

    accepted = inspect.signature(load_source).parameters
    options = {k: v for k, v in data_cfg.items() if k in accepted and k != "name"}
    options["train"] = train
    if data_cfg["name"] in GENERATED_SOURCES:
        options["seed"] = int(options.get("seed") or 0) + (0 if train else 1)
        options["n"] = n or options.get("n", 100_000)
    raw = load_source(data_cfg["name"], **options)
    return raw[:n] if n else raw


def data_dir(data_cfg: Mapping) -> Path:
    """Where the data lives (for cached statistics): data.root, the folder of data.path, or
    ~/.cache/sde for bundled and generated sets."""
    if data_cfg.get("root"):
        return Path(data_cfg["root"]).expanduser()
    if data_cfg.get("path"):
        return Path(data_cfg["path"]).expanduser().parent
    return Path("~/.cache/sde").expanduser()


# --- likelihood --------------------------------------------------------------------------------
LIKELIHOOD_STREAM = 6


def likelihood_metric(loaded, raw: torch.Tensor, data_cfg: Mapping, *, batch_size: int,
                      repeats: int, hutchinson: str, rtol: float, atol: float, eps: float,
                      seed: int, device, progress: bool = True) -> dict:
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
        g = stream_generator(seed, r, b, LIKELIHOOD_STREAM)
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


def latent_likelihood(loaded, raw: torch.Tensor, data_cfg: Mapping, *, batch_size: int,
                      hutchinson: str, rtol: float, atol: float, eps: float, seed: int,
                      device, progress: bool = True) -> dict:
    """`latent_nll` (nats per example) and `latent_bpd` (bits per latent dim) of the scaled
    posterior-mean latents of the images `raw`, with standard errors and the mean NFE."""
    from tqdm import tqdm

    from sde.likelihood import log_likelihood

    dim = int(np.prod(loaded.shape))
    if hutchinson == "auto":
        hutchinson = "exact" if dim <= 16 else "rademacher"
    values, nfes = [], []
    for b, batch in enumerate(tqdm(raw.split(batch_size), desc="latent_nll", disable=not progress)):
        g = stream_generator(seed, 0, b, LIKELIHOOD_STREAM)
        z = loaded.scaler(batch.float() / (data_cfg["levels"] - 1)).to(device)  # (B, *latent)
        logp, _, nfe = log_likelihood(loaded.sde, loaded.score_fn, z, hutchinson=hutchinson,
                                      rtol=rtol, atol=atol, eps=eps, generator=g)
        values.append(-logp.double().cpu())
        nfes.append(nfe)
    v = torch.cat(values)
    sem = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    per_dim = dim * math.log(2.0)
    return {"latent_nll": float(v.mean()), "latent_nll_sem": sem,
            "latent_bpd": float(v.mean()) / per_dim, "latent_bpd_sem": sem / per_dim,
            "latent_dims": dim, "latent_n": int(len(raw)), "latent_nfe": float(np.mean(nfes))}


# --- samples -----------------------------------------------------------------------------------
def image_quality(samples: torch.Tensor, net, data_cfg: Mapping, *, metrics, opts: EvalOptions,
                  device, progress: bool = True) -> dict:
    """FID / KID / IS of samples (N, C, H, W) in [0, 1] against the training split."""
    from sde.metrics.fid import batched, extract_features

    features = extract_features(net, batched(samples, opts.batch_size), device=device,
                                progress=progress)
    return feature_quality(*features, net, data_cfg, metrics=metrics, opts=opts, device=device,
                           progress=progress)


def feature_quality(features: torch.Tensor, logits: torch.Tensor, net, data_cfg: Mapping, *,
                    metrics, opts: EvalOptions, device, progress: bool = True) -> dict:
    """FID / KID / IS from the samples' Inception pool features (N, 2048) and logits (N, 1008)
    against the training split's statistics (cached next to the data)."""
    from sde.metrics.fid import batched, image_metrics, reference_statistics

    reference = load_split(data_cfg, train=True).float() / (data_cfg["levels"] - 1)
    h, w = reference.shape[-2:]
    mode = "" if net.preprocessing == "pytorch_fid" else f"_{net.preprocessing}"  # tf1: its own
    cache = Path(opts.reference_stats) if opts.reference_stats else (
        data_dir(data_cfg) / f"fid_stats_{data_cfg['name']}_{h}x{w}_train{mode}.npz")
    weights = Path(opts.inception_weights)
    key = f"{weights.name}:{weights.stat().st_size}"
    stats = reference_statistics(lambda: batched(reference, opts.batch_size), cache, net=net,
                                 key=key, device=device, progress=progress)
    out = image_metrics(features, logits, stats, metrics=metrics, kid_subsets=opts.kid_subsets,
                        kid_subset_size=opts.kid_subset_size, is_splits=opts.is_splits)
    return {**out, "reference_stats": str(cache)}


def toy_figures(loaded, held_out: torch.Tensor, samples: torch.Tensor, out_dir: Path, *,
                sampler: str, sampler_options: Mapping | None, seed: int, opts: EvalOptions,
                device) -> dict:
    """Scatter, likelihood heatmap and sampler trajectories of 2-D data in `out_dir`."""
    from sde.likelihood import log_likelihood
    from sde.metrics.toy import (
        RecordingScore,
        affine_log_det,
        density_grid,
        save_density,
        save_trajectories,
    )
    from sde.runs.figures import save_scatter

    files = {"scatter": save_scatter(samples, out_dir / "samples.png", reference=held_out)}
    log_det = affine_log_det(loaded.scaler, 2)
    log_prob = lambda p: log_likelihood(
        loaded.sde, loaded.score_fn, loaded.scaler(p).float().to(device), hutchinson="exact",
        rtol=opts.rtol, atol=opts.atol, eps=opts.likelihood_eps)[0].double().cpu() + log_det
    lim = 1.2 * float(held_out.abs().max())
    logp, extent = density_grid(log_prob, lim=lim, resolution=opts.resolution)
    files["density"] = save_density(logp, extent, out_dir / "density.png", title="model density")
    rec = RecordingScore(loaded.score_fn, keep=opts.trajectories)
    final, *_ = draw_samples(loaded, sampler=sampler, sampler_options=sampler_options,
                             n=opts.trajectories, seed=seed, batch_size=opts.trajectories,
                             score_fn=rec, device=device, progress=False)
    paths = loaded.inverse_scaler(rec.trajectories())
    paths = torch.cat([paths, final.flatten(1)[:, None]], dim=1)  # (K, steps + 1, 2)
    files["trajectories"] = save_trajectories(paths, out_dir / "trajectories.png",
                                              title=f"{sampler} trajectories")
    return {f"{k}_png": str(v) for k, v in files.items()}


def sample_metrics(loaded, metrics, data_cfg: Mapping, *, opts: EvalOptions, sampler: str,
                   sampler_options: Mapping | None, seed: int, net, run_dir: Path, device,
                   info: DistInfo, progress: bool) -> dict:
    """fid/kid/is and toy metrics from `opts.n` samples, sharded over ranks: each rank draws its
    samples (and their Inception features); rank 0 gathers them and scores."""
    from sde.metrics.toy import sample_distances

    samples, _, nfe, _ = draw_samples(loaded, sampler=sampler, sampler_options=sampler_options,
                                      n=opts.n, seed=seed, batch_size=opts.batch_size,
                                      device=device, info=info, progress=progress)
    image = any(m in IMAGE_METRICS for m in metrics)
    mine = {"samples": samples if "toy" in metrics else None, "features": None}
    if image:  # each rank scores its own samples: 24 kB of features a sample travel, any size
        from sde.metrics.fid import batched, extract_features

        mine["features"] = extract_features(net, batched(samples, opts.batch_size), device=device,
                                            progress=progress and info.is_main)
    parts = gather_to_main(mine, info)
    if not info.is_main:
        return {}
    values: dict = {"sampler": sampler, "sample_n": opts.n, "sample_nfe": nfe}
    if image:
        features, logits = (torch.cat(x) for x in zip(*(p["features"] for p in parts)))
        values.update(feature_quality(features, logits, net, data_cfg, metrics=metrics, opts=opts,
                                      device=device, progress=progress))
    if "toy" in metrics:
        samples = torch.cat([p["samples"] for p in parts])
        held_out = load_split(data_cfg, train=False, n=opts.n)
        values.update(sample_distances(samples, held_out))
        if tuple(samples.shape[1:]) == (2,):
            values.update(toy_figures(loaded, held_out, samples, run_dir / "eval",
                                      sampler=sampler, sampler_options=sampler_options,
                                      seed=seed, opts=opts, device=device))
    return values


# --- results -----------------------------------------------------------------------------------
def log_to_wandb(values: dict, *, logger: Mapping, run_dir: Path, step, config: dict) -> None:
    """Log the numeric values under eval/ with the `logger` config section (backend wandb or
    none), as a W&B run named eval/<run dir name> in the group "eval"."""
    from sde.runs.logger import make_logger

    options = dict(logger)
    options.setdefault("backend", "none")
    if options["backend"] == "wandb":
        options["name"] = options.pop("run_name", None) or f"eval/{run_dir.name}"
        options["group"] = options.get("group") or "eval"
    lg = make_logger(**options, run_dir=run_dir, config=config)
    numeric = {f"eval/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
    lg.log(numeric, step=step or 0)
    lg.finish()


def evaluate_run(run=None, *, metrics=None, sampler: str = "pc",
                 sampler_options: Mapping | None = None, data: Mapping | None = None,
                 logger: Mapping | None = None, seed: int = 0, device=None, runs_root=RUNS_ROOT,
                 info: DistInfo | None = None, progress: bool = True, **eval_options) -> dict:
    """Evaluate a run (see the module docstring); the values, also merged into metrics.json.

    `eval_options` are the fields of `EvalOptions` (n, likelihood_n, batch_size, ...); `data`
    overrides keys of the run's data section (e.g. another root); `logger` is a logger section
    (default: none)."""
    from sde.runs.load import load_run
    from sde.runs.metrics import record_eval

    info = info or DistInfo()
    opts = EvalOptions.of(eval_options)
    check_int(seed, "seed", 0)
    path = resolve_run(run, runs_root)  # a bad path fails before anything heavy
    run_dir = check_writable(run_dir_of(path))  # results are written there: check it first
    device = resolve_device(device, local_rank=info.local_rank)
    loaded = load_run(path, ema=opts.ema, device=device)
    data_cfg = {**loaded.config["data"], **{k: v for k, v in (data or {}).items() if v is not None}}
    metrics = check_metrics(metrics, data_cfg, latent=loaded.latent is not None)
    net = None
    if any(m in IMAGE_METRICS for m in metrics):  # fail on missing weights before any work
        from sde.metrics.inception import load_inception

        net = load_inception(opts.inception_weights, device=device,
                             preprocessing=opts.inception_preprocessing)
    start, values = time.perf_counter(), {}
    if info.is_main and ("bpd" in metrics or "nll" in metrics):
        raw = load_split(data_cfg, train=False, n=opts.likelihood_n)
        values.update(likelihood_metric(
            loaded, raw, data_cfg, batch_size=opts.batch_size, repeats=opts.repeats,
            hutchinson=opts.hutchinson, rtol=opts.rtol, atol=opts.atol, eps=opts.likelihood_eps,
            seed=seed, device=device, progress=progress))
    if info.is_main and "latent_nll" in metrics:
        raw = load_split(data_cfg, train=False, n=opts.likelihood_n)
        values.update(latent_likelihood(
            loaded, raw, data_cfg, batch_size=opts.batch_size, hutchinson=opts.hutchinson,
            rtol=opts.rtol, atol=opts.atol, eps=opts.likelihood_eps, seed=seed, device=device,
            progress=progress))
    if any(m in IMAGE_METRICS or m == "toy" for m in metrics):
        values.update(sample_metrics(loaded, metrics, data_cfg, opts=opts, sampler=sampler,
                                     sampler_options=sampler_options, seed=seed, net=net,
                                     run_dir=run_dir, device=device, info=info,
                                     progress=progress))
    if not info.is_main:
        return {}
    details = {"checkpoint_step": loaded.step, "seed": seed, "metrics": metrics,
               "processes": info.world, "seconds": round(time.perf_counter() - start, 2),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record_eval(run_dir, values, details)
    log_to_wandb(values, logger=logger or {"backend": "none"}, run_dir=run_dir, step=loaded.step,
                 config={"eval": dataclasses.asdict(opts), "sampler": sampler, "metrics": metrics})
    import json

    print(json.dumps({"run": str(path), **values, **details}), flush=True)
    return values
