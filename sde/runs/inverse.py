"""Inpainting and colorization of a run's images from the command line (`python -m sde.sample
task=inpaint|colorize`): `inverse_run` reads the inputs, builds the mask, calls
`sde.sampling.controllable.inpaint` / `colorize` with the PC sampler's options, and writes an npz
and a grid whose rows are input | mask | sample (colorize: grey input | sample).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sde.runs.env import check_int, resolve_device, sample_seeds
from sde.runs.figures import is_image_shape, save_image_grid
from sde.runs.files import atomic_write, check_writable
from sde.runs.paths import RUNS_ROOT, resolve_run, run_dir_of

TASKS = ("inpaint", "colorize")
PC_KEYS = ("predictor", "corrector", "snr", "n_steps", "denoise", "eps", "corrector_options")


def make_mask(spec, shape, *, seed: int = 0) -> torch.Tensor:
    """The known-pixel mask (1 = known) for images of `shape` (C, H, W), (1, C, H, W) or from a
    file (N, C, H, W): `center` (the central half-size square unknown), `left` (the left half
    known, the right half to fill), `random:P` (each pixel unknown with probability P, the same
    over channels), or FILE.npz holding `mask` shaped (H, W), (C, H, W) or (N, C, H, W)."""
    c, h, w = shape
    spec = str(spec)
    mask = torch.ones(1, c, h, w)
    if spec == "center":
        mask[..., h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
    elif spec == "left":
        mask[..., w // 2:] = 0
    elif spec.startswith("random:"):
        p = _probability(spec)
        drop = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(seed)) < p
        mask = mask.masked_fill(drop, 0.0)
    elif spec.endswith(".npz"):
        mask = _mask_file(Path(spec), shape)
    else:
        raise ValueError(f"mask={spec!r}; use center, left, random:P (0 <= P <= 1) or FILE.npz "
                         "(an array `mask`, 1 = known)")
    return mask


def _probability(spec: str) -> float:
    try:
        p = float(spec.split(":", 1)[1])
    except ValueError:
        p = -1.0
    if not 0 <= p <= 1:
        raise ValueError(f"mask={spec!r}: P in random:P must be a number in [0, 1]")
    return p


def _mask_file(path: Path, shape) -> torch.Tensor:
    """A mask (N or 1, C, H, W) from an npz's `mask` array (1 = known, 0 = to fill)."""
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} not found")
    with np.load(path) as f:
        if "mask" not in f:
            raise ValueError(f"{path} has no array `mask` (found {list(f.keys())})")
        m = torch.from_numpy(np.asarray(f["mask"], dtype=np.float32))
    m = m.reshape(1, 1, *m.shape) if m.ndim == 2 else (m[None] if m.ndim == 3 else m)
    if m.ndim != 4 or tuple(m.shape[2:]) != tuple(shape[1:]) or m.shape[1] not in (1, shape[0]):
        raise ValueError(f"{path}: mask shaped {tuple(m.shape)} does not fit images shaped "
                         f"{tuple(shape)}; use (H, W), (C, H, W) or (N, C, H, W)")
    if not torch.isin(m, torch.tensor([0.0, 1.0])).all():
        raise ValueError(f"{path}: mask values must be 0 (to fill) or 1 (known)")
    return m.expand(m.shape[0], shape[0], *shape[1:])


def image_shape_of(run) -> tuple:
    """The shape of one of the run's images: its data shape, or a latent run's decoded shape."""
    return tuple(run.image_shape if getattr(run, "latent", None) is not None else run.shape)


def latent_mask(mask: torch.Tensor, f: int, channels: int) -> torch.Tensor:
    """A pixel mask (N, C, H, W) seen on latents downsampled by f: a latent cell is known only
    when all f x f pixels of it, in every channel, are known -> (N, channels, H / f, W / f)."""
    known = -F.max_pool2d(-mask.amin(1, keepdim=True), f)  # min over each f x f block
    return known.expand(-1, channels, -1, -1)


def load_inputs(data, run, n: int) -> torch.Tensor:
    """n input images in [0, 1] (n, C, H, W): the first n of `data` (an .npz of images in
    [0, 1], key `images`, `samples` or its only array; or uint8 0..255), or, for data=None, of
    the run's own held-out data (digits' test split)."""
    if data is None:
        from sde.data import load_source

        section = run.data
        if section.get("name") != "digits":
            raise ValueError(f"data= is needed: this run was trained on data={section.get('name')}"
                             "; give data.path=FILE.npz with images (N, C, H, W) in [0, 1]")
        raw = load_source("digits", train=False).float() / (section["levels"] - 1)
    else:
        raw = _images_file(Path(data))
    shape = image_shape_of(run)
    if tuple(raw.shape[1:]) != shape:
        raise ValueError(f"data={data}: images shaped {tuple(raw.shape[1:])}, but the run "
                         f"makes {shape}")
    if len(raw) < n:
        raise ValueError(f"data={data} holds {len(raw)} images; n={n} needs as many")
    return raw[:n]


def _images_file(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"data={path}: no such file (an .npz of images (N, C, H, W))")
    with np.load(path) as f:
        keys = [k for k in ("images", "samples") if k in f] or list(f.keys())
        if len(keys) != 1 and not {"images", "samples"} & set(keys):
            raise ValueError(f"{path}: name the images `images` (found {list(f.keys())})")
        array = np.asarray(f[keys[0]])
    x = torch.from_numpy(array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0))
    if x.ndim != 4 or x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: images must be (N, C, H, W) in [0, 1] or uint8, got "
                         f"{tuple(x.shape)} in [{float(x.min()):g}, {float(x.max()):g}]")
    return x


def _pc_options(options: Mapping | None):
    """(N steps, inpaint keyword args) from the pc sampler section."""
    options = dict(options or {})
    steps = options.pop("steps", None)
    if options.pop("probability_flow", False):
        raise ValueError("task=inpaint/colorize steps the reverse SDE; set "
                         "sampler.probability_flow=false")
    options.pop("grid", None)
    unknown = sorted(set(options) - set(PC_KEYS))
    if unknown:
        raise ValueError(f"task= takes the pc sampler's options; unknown {unknown} "
                         "(use sampler=pc)")
    return steps, options


def solve(run, task: str, inputs: torch.Tensor, mask: torch.Tensor, *, method: str,
          sampler_options: Mapping | None, seed: int, device) -> torch.Tensor:
    """The samples in [0, 1] (n, C, H, W) of `task` on `inputs` in [0, 1], known where mask."""
    from sde.sampling.controllable import colorize, inpaint
    from sde.sampling.registry import with_steps
    from sde.utils import PerSampleGenerator

    steps, options = _pc_options(sampler_options)
    sde = with_steps(run.sde, steps) if steps is not None else run.sde
    generator = PerSampleGenerator(sample_seeds(seed, len(inputs)), device=torch.device(device))
    if getattr(run, "latent", None) is not None:
        if task != "inpaint":
            raise ValueError(f"task={task} is not defined on a latent run (a grey image is no "
                             "mask on latents); use task=inpaint, or a pixel-space run")
        return _latent_inpaint(run, sde, inputs, mask, method=method, generator=generator,
                               options=options, device=device)
    y = run.scaler(inputs).to(device)  # (n, C, H, W) model space
    if task == "inpaint":
        m = mask.expand_as(y).to(device)
        x, _ = inpaint(sde, run.score_fn, y * m, m, method=method, generator=generator, **options)
    else:
        if y.shape[1] != 3:
            raise ValueError(f"task=colorize needs a 3-channel model; this one makes "
                             f"{y.shape[1]} channel(s): use task=inpaint")
        x, _ = colorize(sde, run.score_fn, y.mean(1, keepdim=True), method=method,
                        generator=generator, **options)
    return run.inverse_scaler(x.float().cpu()).clamp(0, 1)


def _latent_inpaint(run, sde, inputs, mask, *, method, generator, options, device):
    """Inpainting in a latent run's latent space (Blended Latent Diffusion, Avrahami et al.
    2023): the masked images are encoded, the latent cells whose pixels are all known are kept
    (`latent_mask`), the rest sampled; the decoded images get the known pixels back."""
    from sde.sampling.controllable import inpaint

    y = run.scaler(inputs * mask).to(device)  # the unknown pixels are never seen
    m = latent_mask(mask, run.latent.autoencoder.downsample_factor, y.shape[1]).to(device)
    z, _ = inpaint(sde, run.score_fn, y * m, m, method=method, generator=generator, **options)
    decoded = run.inverse_scaler(z.float().cpu()).clamp(0, 1)
    return torch.where(mask.bool(), inputs, decoded)


def inverse_run(run=None, *, task: str, mask="center", data=None, n: int = 8, seed: int = 0,
                method: str = "replacement", sampler_options: Mapping | None = None, out=None,
                ema: bool = True, device=None, runs_root=RUNS_ROOT) -> dict:
    """Inpaint or colorize n inputs with a run; writes `out` (default
    <run>/samples/<task>_seed<S>_n<N>.npz: inputs, mask, samples in [0, 1]) and its grid .png."""
    from sde.runs.load import load_run
    from sde.runs.sampling import log_record

    if task not in TASKS:
        raise ValueError(f"task={task!r}; choose one of {list(TASKS)}")
    check_int(n, "n", 1)
    check_int(seed, "seed", 0)
    path = resolve_run(run, runs_root)
    run_dir = run_dir_of(path)
    target = Path(out) if out else run_dir / "samples" / f"{task}_seed{seed}_n{n}.npz"
    check_writable(target.parent, what="output folder")
    device = resolve_device(device)
    loaded = load_run(path, ema=ema, device=device)
    shape = image_shape_of(loaded)
    if not is_image_shape(shape):
        raise ValueError(f"task={task} needs an image model; this run's data is shaped "
                         f"{list(shape)}")
    inputs = load_inputs(data, loaded, n)
    known = (make_mask(mask, shape, seed=seed) if task == "inpaint" else torch.zeros(1, *shape))
    known = known.expand(n, *shape) if len(known) == 1 else known[:n]
    if len(known) != n:
        raise ValueError(f"mask file holds {len(known)} masks; n={n} needs 1 or n")
    samples = solve(loaded, task, inputs, known, method=method, sampler_options=sampler_options,
                    seed=seed, device=device)
    shown = inputs * known if task == "inpaint" else inputs.mean(1, keepdim=True).expand_as(inputs)
    arrays = {"inputs": inputs.numpy(), "mask": known.numpy(), "samples": samples.numpy()}
    atomic_write(target, lambda f: np.savez(f, **arrays))
    columns = [shown, known, samples] if task == "inpaint" else [shown, samples]
    grid = torch.stack(columns, 1).flatten(0, 1)  # (n * k, C, H, W): one row per input
    png = save_image_grid(grid, target.with_suffix(".png"), nrow=len(columns))
    record = {"run": str(path), "task": task, "mask": str(mask) if task == "inpaint" else None,
              "method": method, "n": n, "seed": seed, "npz": str(target), "png": str(png)}
    log_record(record, run_dir / "samples.jsonl")
    return record
