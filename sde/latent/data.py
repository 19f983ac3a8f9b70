"""Training data in a frozen autoencoder's latent space (Rombach et al. 2022, Sec. 3 and 4.3.2).

`LatentDataset` has the interface of `sde.data.Dataset` that the score loop (`sde.training.loop
.fit`) uses: `batch(step, batch_size, seed=, rank=, world=)`, `shape` (the latent shape),
`fingerprint`, `scaler` / `inverse_scaler`, so a score SDE trains on latents with the loop
unchanged. Each batch is the image batch of the same (seed, rank, step), encoded with a
posterior sample drawn from a generator of (seed, rank, step) (exactly resumable), or read from
a cache written once (`cache_latents=true`: one posterior sample per image, of the images
without random flips).

The scale factor is LDM's 1 / std of the latents of the first training batch (the image batch
of step 0, rank 0, encoded with the generator of (seed, 0, 0)): the same on every rank, stored
in the run's config (`latent.scale_factor`) and, on resume, read back rather than refitted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from sde.data import step_generator
from sde.latent.cache import load_latents, save_latents
from sde.latent.space import LatentSpace

log = logging.getLogger("sde.latent")

LATENT_STREAM = 7  # the posterior samples of step k (the score loop uses streams 0..6)
CACHE_NAME = "latents.safetensors"


def latent_scalers(space: LatentSpace, image_scaler, image_inverse_scaler):
    """(scaler, inverse_scaler) of a latent run: images in [0, 1] -> scaled latents (the
    posterior mean, s (mode - shift)) and scaled latents -> decoded images in [0, 1]. Inputs may
    be on any device; outputs come back on it."""
    device = space.scale_factor.device

    @torch.no_grad()
    def scaler(x: torch.Tensor) -> torch.Tensor:
        posterior = space.autoencoder.encode(image_scaler(x).to(device, torch.float32))
        return ((posterior.mode() - space.shift_factor) * space.scale_factor).to(x.device)

    @torch.no_grad()
    def inverse_scaler(z: torch.Tensor) -> torch.Tensor:
        x = space.decode(z.to(device, torch.float32))
        return image_inverse_scaler(x).clamp(0, 1).to(z.device)  # (B, C, H, W)

    return scaler, inverse_scaler


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's state dict (names, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=12)
    for name, value in module.state_dict().items():
        h.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LatentDataset:
    """An image dataset seen through a frozen `LatentSpace` (see the module docstring)."""

    def __init__(self, images, space: LatentSpace, *, autoencoder_path: str, cached=None):
        if not space.is_fitted:
            raise ValueError("LatentDataset needs a fitted LatentSpace (fit_scale_factor first)")
        self.images, self.space, self.autoencoder_path = images, space, autoencoder_path
        self.cached = cached  # (N, *latent shape) on the space's device, or None
        self.name, self.levels, self.centered = images.name, None, images.centered
        self.image_shape = tuple(images.shape)
        self.shape = tuple(space.latent_shape((1, *images.shape))[1:])
        self.scaler, self.inverse_scaler = latent_scalers(space, images.scaler,
                                                          images.inverse_scaler)
        self.weights = weights_fingerprint(space.autoencoder)
        self.fingerprint = (f"latent:{images.fingerprint}:ae={self.weights}:"
                            f"s={float(space.scale_factor):.8g}:cache={cached is not None}")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """The scaled latents of the training batch of `step` for `rank`, (batch_size, *shape)."""
        if self.cached is not None:
            idx = self.images.indices(step, batch_size, seed=seed, rank=rank, world=world)
            return self.cached[idx.to(self.cached.device)]
        x = self.images.batch(step, batch_size, seed=seed, rank=rank, world=world)
        device = self.space.scale_factor.device
        g = step_generator(seed, rank, step, LATENT_STREAM, device=device)
        return self.space.encode(x.to(device), generator=g)  # (B, embed_dim, h, w)

    def latent_config(self) -> dict:
        """What a latent run stores in its config (`latent` section) to describe itself."""
        return {"autoencoder": self.autoencoder_path,
                "scale_factor": float(self.space.scale_factor),
                "shift_factor": float(self.space.shift_factor),
                "sample_posterior": bool(self.space.sample_posterior),
                "cache": self.cached is not None, "image_shape": list(self.image_shape),
                "autoencoder_weights": self.weights}


def _stored_scale_factor(run_dir) -> float | None:
    """The scale factor stored in the newest checkpoint of `run_dir` (a resume), if any."""
    from sde.runs.checkpoint import latest_checkpoint, load_checkpoint

    if run_dir is None or not (Path(run_dir) / "checkpoints").is_dir():
        return None
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    return (load_checkpoint(latest)["config"].get("latent") or {}).get("scale_factor")


def fit_first_batch(space: LatentSpace, images, *, seed: int, batch_size: int) -> float:
    """LDM's scale factor from the first training batch (step 0, rank 0), the same on all ranks."""
    device = space.scale_factor.device
    x = images.batch(0, batch_size, seed=seed, rank=0, world=1).to(device)
    return space.fit_scale_factor(x, generator=step_generator(seed, 0, 0, LATENT_STREAM, device))


@torch.no_grad()
def _cache(space: LatentSpace, images, path: Path, *, seed: int, batch_size: int = 256):
    """Every image's scaled latents (one posterior sample, no flips), read from `path` or
    encoded once and written there."""
    if path.is_file():
        latents = load_latents(path, space)
        if len(latents) != len(images):
            raise ValueError(f"{path} holds {len(latents)} latents for {len(images)} images: "
                             "delete it to recompute it")
        return latents.to(space.scale_factor.device)
    device = space.scale_factor.device
    g = step_generator(seed, 0, 0, LATENT_STREAM + 1, device=device)
    parts = []
    for start in range(0, len(images), batch_size):
        x = _unflipped(images, images.data[start:start + batch_size])
        parts.append(space.encode(x.to(device), generator=g))
    latents = torch.cat(parts)
    save_latents(path, latents, space)
    log.info("cached %d latents in %s", len(latents), path)
    return latents


def _unflipped(images, raw: torch.Tensor) -> torch.Tensor:
    """Raw images -> model space without flips or dequantization (the cache holds originals)."""
    from sde.data import to_model_space

    return to_model_space(raw, None, levels=images.levels, centered=images.centered,
                          random_flip=False, dequantize=False)


def latent_dataset(images, autoencoder, *, cache: bool, run_dir, seed: int, batch_size: int,
                   device=None) -> LatentDataset:
    """The latent view of `images` through the frozen autoencoder of run/folder `autoencoder`
    (an `ae_*` run, its checkpoint, or a diffusers VAE folder), with the scale factor stored in
    `run_dir` (resume) or fitted on the first batch; `cache` reads/writes run_dir/latents."""
    from sde.runs.load import load_autoencoder

    model, path = load_autoencoder(autoencoder, device=device)
    space = LatentSpace(model, scale_factor=_stored_scale_factor(run_dir)).to(device)
    factor = fit_first_batch(space, images, seed=seed, batch_size=batch_size)
    log.info("latent space of %s: latents %s, scale factor %.6g", path,
             list(space.latent_shape((1, *images.shape))[1:]), factor)
    cached = _cache(space, images, Path(run_dir) / CACHE_NAME, seed=seed) if cache else None
    return LatentDataset(images, space, autoencoder_path=str(path), cached=cached)


def training_data(config: dict, *, run_dir, device=None):
    """The training data of a resolved train config: `sde.data.Dataset(**config["data"])`, or,
    with `autoencoder` set, its `LatentDataset`; records the data's shape and fingerprint in
    `config["data"]` and a latent run's `latent` section in `config` (what `sde.train` stores)."""
    from sde.data import Dataset

    data = Dataset(**config["data"])
    autoencoder = config.get("autoencoder")
    if autoencoder == "???":
        raise ValueError(f"experiment={config.get('experiment')} trains on an autoencoder's "
                         "latents: pass autoencoder=RUN, an ae_* run directory (python -m "
                         "sde.train experiment=ae_digits) or a diffusers VAE folder")
    if autoencoder:
        data = latent_dataset(data, autoencoder, cache=bool(config.get("cache_latents")),
                              run_dir=run_dir, seed=config["seed"],
                              batch_size=config["trainer"]["batch_size"], device=device)
        config["latent"] = data.latent_config()
    config["data"].update(shape=list(data.shape), fingerprint=getattr(data, "fingerprint", None))
    return data
