"""Periodic samples during training: a PNG grid of images, or a scatter plot of 2-D data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def draw_samples(sde, score_fn, shape, *, sampler: dict, generator=None, device=None):
    """Samples (B, *shape[1:]) in model space and the NFE, from the `sampler` config section."""
    options = {k: v for k, v in sampler.items() if k != "name"}
    from sde.sampling import get_sampler

    fn = get_sampler(sampler.get("name", "pc"))
    x, nfe = fn(sde, score_fn, tuple(shape), generator=generator, device=device, **options)
    return x, int(nfe)


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """(B, C, H, W) images in [0, 1] -> one PNG grid (1-pixel gaps), upscaled to >= 256 px wide."""
    from PIL import Image

    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for k in range(b):
        r, q = divmod(k, nrow)
        top, left = 1 + r * (h + 1), 1 + q * (w + 1)
        grid[:, top: top + h, left: left + w] = images[k]
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)
    scale = max(1, 256 // image.width)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_scatter(points: torch.Tensor, path, *, reference: torch.Tensor | None = None,
                 title: str = "") -> Path:
    """A scatter plot of (B, 2) samples (over `reference` data in grey) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ref = reference[:, :2].cpu().numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", label="data")
    pts = np.nan_to_num(points[:, :2].float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def save_samples(x: torch.Tensor, path, *, inverse_scaler, reference=None, title="") -> Path:
    """Images (B, C, H, W) -> grid; 2-D points (B, 2) -> scatter; anything else -> .npy."""
    if x.ndim == 4:
        return save_image_grid(inverse_scaler(x.float().cpu()), path)
    if x.ndim == 2 and x.shape[1] == 2:
        return save_scatter(inverse_scaler(x.float()), path, reference=reference, title=title)
    path = Path(path).with_suffix(".npy")
    np.save(path, inverse_scaler(x.float()).cpu().numpy())
    return path
