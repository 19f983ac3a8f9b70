"""Patches of the two photographs bundled with scikit-learn (`load_sample_images`): real
RGB photos at hand offline for tests and demos.

`china.jpg` and `flower.jpg` (427 x 640, uint8) are optionally downscaled by `scale`, then cut
into non-overlapping `size` x `size` patches on a grid. The split is spatial, hence leak-free
and deterministic: the grid columns in the right-most `test_fraction` of each photo are the
held-out patches, the others the training patches.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

PHOTOS = ("china.jpg", "flower.jpg")


def _photo_dir() -> Path:
    """sklearn/datasets/images, found without the slow `import sklearn`."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("data=photos needs scikit-learn (pip install scikit-learn)")
    return Path(spec.origin).parent / "datasets" / "images"


def sample_photos(scale: float = 1.0) -> list[np.ndarray]:
    """The bundled photographs as uint8 (H, W, 3) arrays, resized by `scale` (box filter)."""
    from PIL import Image

    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    photos = []
    for name in PHOTOS:
        with Image.open(_photo_dir() / name) as image:
            image = image.convert("RGB")
            if scale != 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                image = image.resize(size, Image.Resampling.BOX)
            photos.append(np.asarray(image, dtype=np.uint8))
    return photos


def _grid(photo: np.ndarray, size: int, train: bool | None, test_fraction: float) -> np.ndarray:
    """Non-overlapping patches (n, size, size, 3) of one photo, row-major, from one split."""
    rows, cols = photo.shape[0] // size, photo.shape[1] // size
    n_test = max(1, round(cols * test_fraction))
    if rows < 1 or cols - n_test < 1:
        raise ValueError(f"size={size} is too large for a {photo.shape[0]}x{photo.shape[1]} "
                         "photo with a train/test split (lower size or raise scale)")
    keep = range(cols) if train is None else range(cols - n_test) if train else \
        range(cols - n_test, cols)
    return np.stack([photo[r * size:(r + 1) * size, c * size:(c + 1) * size]
                     for r in range(rows) for c in keep])


def photo_patches(*, size: int = 32, train: bool | None = True, scale: float = 1.0,
                  test_fraction: float = 0.2) -> torch.Tensor:
    """uint8 (N, 3, size, size) patches of the bundled photos: the training split, the
    held-out split (`train=False`) or all (`train=None`); see the module docstring."""
    if size < 1 or not 0 < test_fraction < 1:
        raise ValueError(f"need size >= 1 and 0 < test_fraction < 1, got size={size}, "
                         f"test_fraction={test_fraction}")
    patches = np.concatenate([_grid(p, size, train, test_fraction) for p in sample_photos(scale)])
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()
