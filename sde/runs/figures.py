"""Figures of samples: a PNG grid of images, or a scatter plot of 2-D data (written atomically)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from sde.runs.files import write_bytes


def is_image_shape(shape) -> bool:
    """Whether one example of this shape is an image (C, H, W)."""
    return len(shape) == 3


def image_grid(images: torch.Tensor, *, nrow: int | None = None) -> np.ndarray:
    """(B, C, H, W) images in [0, 1] -> one (rows, cols[, C]) uint8 grid with 1-pixel gaps."""
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for k in range(b):
        r, q = divmod(k, nrow)
        top, left = 1 + r * (h + 1), 1 + q * (w + 1)
        grid[:, top: top + h, left: left + w] = images[k]
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return array[..., 0] if c == 1 else array


def save_png(array: np.ndarray, path, *, min_width: int = 1) -> Path:
    """A uint8 (H, W) or (H, W, C) array as PNG, upscaled (nearest) to at least `min_width`."""
    from PIL import Image

    image = Image.fromarray(array)
    scale = max(1, min_width // image.width)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), resample=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())


def save_image_grid(images: torch.Tensor, path, *, nrow: int | None = None) -> Path:
    """(B, C, H, W) images in [0, 1] -> one PNG grid, upscaled to >= 256 px wide."""
    return save_png(image_grid(images, nrow=nrow), path, min_width=256)


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue())


def save_figure(samples: torch.Tensor, path, *, reference=None, title: str = "") -> Path | None:
    """Samples in data space: images (B, C, H, W) -> grid of the first 256; points -> scatter of
    their first two coordinates; 1-D data -> no figure (None)."""
    if is_image_shape(samples.shape[1:]):
        return save_image_grid(samples[:256], path)
    if samples[0].numel() >= 2:
        return save_scatter(samples.flatten(1)[:, :2], path, reference=reference, title=title)
    return None
