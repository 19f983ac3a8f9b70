"""Latents computed once and cached to disk (`cache_latents=true`), with their scale factor.

The file is safetensors: `latents` (N, embed_dim, h, w) float32, already scaled by the
space's scale factor, and `scale_factor` / `shift_factor` (0-d), so that a run that reads the
cache can check it was made with the same latent space. Written atomically.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from sde.latent.space import LatentSpace


@torch.no_grad()
def encode_dataset(space: LatentSpace, images: torch.Tensor, *, batch_size: int = 256,
                   generator=None) -> torch.Tensor:
    """Scaled latents of `images` (N, C, H, W) in the autoencoder's range, batch by batch."""
    device = space.scale_factor.device
    return torch.cat([space.encode(x.to(device), generator=generator).cpu()
                      for x in images.split(batch_size)])


def save_latents(path, latents: torch.Tensor, space: LatentSpace) -> Path:
    """Write `latents` and the space's factors to `path` (temp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": latents.detach().float().contiguous().cpu(),
               "scale_factor": space.scale_factor.detach().cpu().clone(),
               "shift_factor": space.shift_factor.detach().cpu().clone()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_latents(path, space: LatentSpace | None = None) -> torch.Tensor:
    """The cached latents of `path`; with `space`, refuse a cache made with other factors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache at {path}: run with cache_latents=true once "
                                "to write it, or encode on the fly")
    tensors = load_file(str(path))
    if space is not None:
        for name in ("scale_factor", "shift_factor"):
            cached, current = float(tensors[name]), float(getattr(space, name))
            if not torch.isclose(torch.tensor(cached), torch.tensor(current), rtol=1e-6):
                raise ValueError(f"{path} was cached with {name}={cached:.6g} but the latent "
                                 f"space has {current:.6g}: delete the cache to recompute it")
    return tensors["latents"]
