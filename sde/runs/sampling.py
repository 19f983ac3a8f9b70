"""Drawing and saving samples of a run: `sample_run` (what `python -m sde.sample` calls).

Seeds: per-sample generators (`sde.runs.env.sample_seeds`), so samples do not depend on the
batch size or on the number of processes, except where a sampler couples the batch: the
`langevin` corrector of `pc` with `per_example: false` (score_sde's batch-averaged step size)
and the `ode` solver (one adaptive step size for the whole batch).

Under `torchrun --nproc_per_node=K` each rank draws a contiguous block of the seeds; rank 0
gathers them (npz) or every rank writes its own `{seed:06d}.png` files (format=png).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sde.runs.distributed import DistInfo, gather_to_main, shard
from sde.runs.env import check_bool, check_int, resolve_device, sample_seeds
from sde.runs.figures import is_image_shape, save_figure, save_png
from sde.runs.files import atomic_write, check_writable
from sde.runs.paths import RUNS_ROOT, resolve_run, run_dir_of

FORMATS = ("npz", "png")


def split_sampler(section: Mapping) -> tuple[str, dict]:
    """(name, options) of a `conf/sampler/*.yaml` section: every key but `name` is an option;
    options the sampler does not take are a ValueError naming them."""
    from sde.sampling.registry import check_sampler_options

    options = dict(section)
    name = str(options.pop("name", "pc"))
    check_sampler_options(name, options)
    return name, options


@torch.no_grad()
def generate(sampler: str, sde, score_fn, shape: Sequence[int], *, seeds: Sequence[int],
             batch_size: int, options: Mapping | None = None, device=None,
             progress: bool = True, per_batch: bool = False) -> tuple[torch.Tensor, float, float]:
    """Samples in model space (len(seeds), *shape) on the CPU, sample i from a generator seeded
    `seeds[i]`, in batches of `batch_size` -> (x, mean NFE per batch, seconds). With
    `per_batch`, `score_fn(start, stop)` gives the score_fn of samples start:stop (e.g. their
    class labels)."""
    from tqdm import tqdm

    from sde.sampling.registry import get_sampler
    from sde.utils import PerSampleGenerator

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fn = get_sampler(sampler)
    gen_device = torch.device(device or "cpu")
    out, nfes, start = [], [], time.perf_counter()
    for first in tqdm(range(0, len(seeds), batch_size), desc="sampling", unit="batch",
                      disable=not progress):
        batch_seeds = seeds[first:first + batch_size]
        generator = PerSampleGenerator(batch_seeds, device=gen_device)
        batch_score_fn = score_fn(first, first + len(batch_seeds)) if per_batch else score_fn
        x, nfe = fn(sde, batch_score_fn, (len(batch_seeds), *shape), generator=generator,
                    device=device, **dict(options or {}))
        out.append(x.detach().float().cpu())
        nfes.append(nfe)
    if gen_device.type == "cuda":
        torch.cuda.synchronize(gen_device)
    x = torch.cat(out) if out else torch.empty(0, *shape)
    return x, float(np.mean(nfes)) if nfes else 0.0, time.perf_counter() - start


def to_data_space(x: torch.Tensor, inverse_scaler, shape) -> torch.Tensor:
    """Model space -> data space; images are clipped to [0, 1]."""
    y = inverse_scaler(x)
    return y.clamp(0, 1) if is_image_shape(shape) else y


def check_finite_samples(x: torch.Tensor, sampler: str) -> None:
    """A ValueError instead of files of NaN: the sampler or the network diverged."""
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(x)} samples of sampler={sampler} hold NaN/Inf (first: "
            f"sample {int(bad.nonzero()[0, 0])}); nothing was written. Check the weights (an "
            "earlier checkpoint, ema=false), or use more steps (sampler.steps) / another sampler")


def parse_labels(label, n: int, num_classes: int | None) -> torch.Tensor | None:
    """The class label of each of n samples (n,) int64: `label` C for all, or "all" for an equal
    share per class in blocks (0, 0, ..., 1, 1, ...); None for label=None."""
    if label is None:
        return None
    if num_classes is None:
        raise ValueError("label= needs a class-conditional run (trained with data.labels=true "
                         "and model.num_classes, e.g. experiment=vp_digits_cond) or a classifier "
                         "(classifier=RUN, e.g. experiment=classifier_digits); this run is "
                         "unconditional: drop label= or give classifier=")
    if label == "all":
        return torch.arange(n) * num_classes // n  # (n,): blocks of n / num_classes
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
        raise ValueError(f"label must be an integer in [0, {num_classes - 1}] or 'all', got "
                         f"{label!r}")
    return torch.full((n,), label, dtype=torch.long)


def class_score_fn(run, labels: torch.Tensor, guidance: float = 0.0, *, classifier=None):
    """`(start, stop) -> score_fn` of samples start:stop of class `labels[start:stop]`:
    classifier-free guidance (Ho & Salimans 2022) on the run's conditional network, or, with
    `classifier` (a loaded noise-conditional classifier run), classifier guidance on the run's
    score (Song et al. 2021, Eq. 14). guidance=0 is the conditional score."""
    from sde.models import get_score_fn
    from sde.sampling.controllable import classifier_guided_score, guided_score

    score = run.config.get("score", {})

    def make(start: int, stop: int):
        y = labels[start:stop].to(run.device)  # (B,)
        if classifier is not None:
            return classifier_guided_score(run.score_fn, classifier.log_prob_fn(y), guidance)
        cond = get_score_fn(run.sde, run.model, **score, model_kwargs={"class_labels": y})
        if guidance == 0:
            return cond
        null = torch.full_like(y, run.model.num_classes)
        uncond = get_score_fn(run.sde, run.model, **score, model_kwargs={"class_labels": null})
        return guided_score(cond, uncond, guidance)

    return make


def check_classifier(run, classifier) -> None:
    """A classifier guides a run only in the run's model space: the same perturbation kernel
    p_0t (alpha(t), std(t) on [0, T]), example shape and data scaling; a ValueError otherwise."""
    if getattr(run, "latent", None) is not None:
        raise ValueError("classifier guidance of a latent run is not supported: the classifier "
                         "sees images, the run samples latents")
    t = torch.linspace(0.0, float(run.sde.T), 11, dtype=torch.float64)
    same_kernel = float(classifier.sde.T) == float(run.sde.T) and all(
        torch.allclose(a, b) for a, b in zip(run.sde.marginal_coeffs(t),
                                             classifier.sde.marginal_coeffs(t)))
    if not same_kernel:
        raise ValueError(f"the classifier {classifier.path} was trained with sde "
                         f"{classifier.config['sde']}, the run samples sde {run.config['sde']}: "
                         "train the classifier with the run's SDE (its sde.* settings)")
    for key in ("shape", "levels", "centered"):
        if classifier.data.get(key) != run.data.get(key):
            raise ValueError(f"the classifier {classifier.path} was trained on data with "
                             f"{key}={classifier.data.get(key)}, the run on {key}="
                             f"{run.data.get(key)}: train the classifier on the run's data")


GRID_EXAMPLES = 256  # training examples the optimised grid is fitted to


def with_stored_grid(run, sampler_options: Mapping | None) -> dict:
    """`sampler_options` with `times` filled in for `grid=optimized`: the run's own Align Your
    Steps grid for (steps, eps), computed once by `optimize_grid` on GRID_EXAMPLES training
    examples and kept in `<run>/grids/` (one file per number of grid times, eps, checkpoint step,
    EMA or not). The grid has `steps` times, or steps + 1 with `denoise_to_zero=False`."""
    options = dict(sampler_options or {})
    if options.get("grid") != "optimized" or options.get("times") is not None:
        return options
    steps, eps = options.get("steps"), float(options.get("eps", 1e-3))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"grid=optimized needs sampler.steps (an integer >= 1), got {steps!r}")
    if getattr(run, "latent", None) is not None:
        raise ValueError("grid=optimized is not stored for latent runs yet: compute the times "
                         "with sde.sampling.optimize_grid and pass sampler.times=[...]")
    points = steps + (options.get("denoise_to_zero", True) is False)  # grid times
    name = f"optimized_steps{points}_eps{eps:g}_step{run.step}{'' if run.ema else '_raw'}.json"
    path = run_dir_of(run.path) / "grids" / name
    if path.is_file():
        options["times"] = json.loads(path.read_text())["times"]
        return options
    from sde.runs.evaluate import load_split
    from sde.runs.files import write_json
    from sde.sampling import optimize_grid

    raw = load_split(run.data, train=True, n=GRID_EXAMPLES).float()
    levels = run.data.get("levels")
    x0 = run.scaler(raw / (levels - 1) if levels else raw).to(run.device)  # (n, ...) model space
    times = optimize_grid(run.sde, run.score_fn, points, x0, eps=eps,
                          generator=torch.Generator(device=x0.device).manual_seed(0))
    options["times"] = times.tolist()
    write_json(path, {"grid_times": points, "eps": eps, "checkpoint_step": run.step, "ema": run.ema,
                      "examples": len(x0), "times": options["times"]})
    return options


def with_run_noise(run, sampler: str, sampler_options: Mapping | None) -> dict:
    """`sampler_options` with sampler=distilled's `noise: null` filled in: the noise the run was
    distilled for (its config's sampler.noise: ddim for progressive, fresh for consistency and
    ADD), else ddim."""
    options = dict(sampler_options or {})
    if sampler == "distilled" and options.get("noise") is None:
        own = run.config.get("sampler") or {}
        options["noise"] = own.get("noise") if own.get("name") == "distilled" else None
        options["noise"] = options["noise"] or "ddim"
    return options


def draw_samples(run, *, sampler: str = "pc", sampler_options: Mapping | None = None, n: int,
                 seed: int = 0, batch_size: int = 64, score_fn=None, device=None,
                 info: DistInfo | None = None, progress: bool = True, labels=None,
                 guidance: float = 0.0, classifier=None):
    """This rank's share of n samples of a loaded run, in data space (images in [0, 1])
    -> (samples, their seeds, NFE, seconds); all of them in one process. With `labels` (n,)
    sample i is of class labels[i] (`class_score_fn`)."""
    info = info or DistInfo()
    if n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    seeds = sample_seeds(seed, n)
    idx = list(shard(n, info))
    mine = [seeds[i] for i in idx]
    per_batch = labels is not None
    sampler_options = with_stored_grid(run, with_run_noise(run, sampler, sampler_options))
    if per_batch:
        score_fn = class_score_fn(run, labels[idx], guidance, classifier=classifier)
    x, nfe, seconds = generate(sampler, run.sde, score_fn or run.score_fn, run.shape, seeds=mine,
                               batch_size=batch_size, options=sampler_options, device=device,
                               progress=progress and info.is_main, per_batch=per_batch)
    check_finite_samples(x, sampler)
    return to_data_space(x, run.inverse_scaler, run.shape), mine, nfe, seconds


def save_samples(samples: torch.Tensor, seeds: Sequence[int], out, *, title: str = "",
                 labels: torch.Tensor | None = None) -> dict:
    """`out` (.npz: samples in data space, their seeds [and class labels]) and its figure next
    to it (.png)."""
    out = Path(out)
    arrays = {"samples": samples.numpy(), "seeds": np.asarray(seeds, dtype=np.int64)}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    atomic_write(out, lambda f: np.savez(f, **arrays))
    png = save_figure(samples, out.with_suffix(".png"), title=title)
    return {"npz": str(out), "png": str(png) if png else None}


def save_pngs(images: torch.Tensor, seeds: Sequence[int], out_dir) -> list[Path]:
    """One `{seed:06d}.png` per image (C, H, W) in [0, 1] (EDM's layout, read by FID tools)."""
    paths = []
    for image, s in zip(images, seeds):
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        paths.append(save_png(array[..., 0] if array.shape[-1] == 1 else array,
                              Path(out_dir) / f"{int(s):06d}.png"))
    return paths


def _outputs(run_dir: Path, *, sampler: str, seed: int, n: int, format: str, out,
             out_dir, tag: str = "") -> Path:
    """The .npz file (format=npz) or folder (format=png) to write, checked writable before any
    work."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; choose one of {list(FORMATS)}")
    stem = run_dir / "samples" / f"{sampler}{tag}_seed{seed}_n{n}"
    if format == "png":
        return check_writable(Path(out_dir) if out_dir else stem, what="output folder")
    target = Path(out) if out else stem.with_suffix(".npz")
    check_writable(target.parent, what="output folder")
    return target


def sample_run(run=None, *, sampler: str = "pc", sampler_options: Mapping | None = None,
               n: int = 64, seed: int = 0, batch_size: int = 64, out=None, format: str = "npz",
               out_dir=None, ema: bool = True, device=None, runs_root=RUNS_ROOT,
               info: DistInfo | None = None, progress: bool = True, label=None,
               guidance: float | None = None, classifier=None) -> dict:
    """Sample a run (directory or checkpoint; None: the newest under `runs_root`) and write
    the files; returns the JSON record, also printed and appended to <run>/samples.jsonl.

    format="npz": `out` (default <run>/samples/<sampler>_seed<S>_n<N>.npz) and a figure next to
    it; format="png": one `{seed:06d}.png` per sample in `out_dir`. `label` (an int, or "all":
    an equal share per class) samples a class of a class-conditional run with classifier-free
    guidance weight `guidance` (0, the default: the conditional score), or with `classifier` (a
    noise-conditional classifier run) a class of any run with classifier guidance of weight
    `guidance` (1, the default: score + grad log p_t(y | x))."""
    from sde.runs.load import load_classifier, load_run

    info = info or DistInfo()
    for key, value, low in (("n", n, 1), ("seed", seed, 0), ("batch_size", batch_size, 1)):
        check_int(value, key, low)
    check_bool(ema, "ema")
    path = resolve_run(run, runs_root)  # a bad path fails before anything heavy
    device = resolve_device(device, local_rank=info.local_rank)
    run_dir = run_dir_of(path)
    if classifier is not None and label is None:
        raise ValueError("classifier= guides samples towards a class: also give label=C (or "
                         "label=all)")
    guidance = (0.0 if classifier is None else 1.0) if guidance is None else guidance
    _check_guidance(label, guidance)
    tag = "" if label is None else f"_{'clf_' if classifier else ''}label{label}_w{guidance:g}"
    target = _outputs(run_dir, sampler=sampler, seed=seed, n=n, format=format, out=out,
                      out_dir=out_dir, tag=tag)
    loaded = load_run(path, ema=ema, device=device)
    num_classes = getattr(loaded.model, "num_classes", None)
    if classifier is not None:
        classifier = load_classifier(classifier, ema=ema, device=device)
        check_classifier(loaded, classifier)
        num_classes = classifier.num_classes
    labels = parse_labels(label, n, num_classes)
    if format == "png" and not is_image_shape(loaded.shape):
        raise ValueError(f"format=png writes images, but this run's data is shaped "
                         f"{list(loaded.shape)}; use format=npz")
    samples, seeds, nfe, seconds = draw_samples(
        loaded, sampler=sampler, sampler_options=sampler_options, n=n, seed=seed,
        batch_size=batch_size, device=device, info=info, progress=progress, labels=labels,
        guidance=guidance, classifier=classifier)
    if format == "png":
        save_pngs(samples, seeds, target)
        files = {"out_dir": str(target)}
    parts = gather_to_main((samples, seeds, seconds) if format == "npz" else seconds, info)
    if not info.is_main:
        return {}
    if format == "npz":
        samples = torch.cat([p[0] for p in parts])
        seeds = [s for p in parts for s in p[1]]
        files = save_samples(samples, seeds, target, title=f"{sampler}, NFE {nfe:g}",
                             labels=labels)
    seconds = max(p[2] if format == "npz" else p for p in parts)
    record = {"run": str(path), "sampler": sampler, "n": n, "seed": seed,
              "batch_size": batch_size, "nfe": nfe, "seconds": round(seconds, 3),
              "img_per_s": round(n / max(seconds, 1e-9), 3), "device": str(device),
              "processes": info.world, "format": format, **files}
    if label is not None:
        record.update(label=label, guidance=guidance)
    if classifier is not None:
        record["classifier"] = str(classifier.path)
    log_record(record, run_dir / "samples.jsonl")
    return record


def _check_guidance(label, guidance) -> None:
    """guidance= needs label=; guidance is a finite number >= 0."""
    ok = isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and np.isfinite(
        guidance)
    if not ok or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if label is None and guidance != 0:
        raise ValueError("guidance= weights the class of label=: also give label=C (or "
                         "label=all)")


def log_record(record: dict, path: Path) -> None:
    """Print the JSON record and append it as one line to `path`."""
    line = json.dumps(record)
    print(line, flush=True)
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:  # a read-only run folder (the samples went elsewhere): not fatal
        warnings.warn(f"could not append to {path}: {e}", stacklevel=2)
