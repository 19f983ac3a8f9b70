"""Patches of the two photographs bundled with scikit-learn (`load_sample_images`): real
RGB photos at hand offline for tests and demos.

`china.jpg` and `flower.jpg` (427 x 640, uint8) are optionally downscaled by `scale`, then cut
into non-overlapping `size` x `size` patches on a grid (row-major, china first). The split is
deterministic and no two patches share a pixel: a fixed permutation (seed 0) of all patches
holds out round(test_fraction N) of them (kept in grid order), the rest are the training set.
A random rather than a spatial split keeps both sets alike: the right edges of both photos
are mostly flat sky and blurred background.
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


def _grid(photo: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping patches (n, size, size, 3) of one photo, row-major."""
    rows, cols = photo.shape[0] // size, photo.shape[1] // size
    if rows < 1 or cols < 1:
        raise ValueError(f"size={size} is too large for a {photo.shape[0]}x{photo.shape[1]} "
                         "photo (lower size or raise scale)")
    return np.stack([photo[r * size:(r + 1) * size, c * size:(c + 1) * size]
                     for r in range(rows) for c in range(cols)])


def split_indices(n: int, test_fraction: float, *, train: bool) -> np.ndarray:
    """Sorted indices of the training or held-out patches among `n` (permutation, seed 0)."""
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"{n} patches cannot be split with test_fraction={test_fraction} "
                         "(lower size or change test_fraction)")
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[n_test:] if train else order[:n_test])


def photo_patches(*, size: int = 32, train: bool | None = True, scale: float = 1.0,
                  test_fraction: float = 0.2) -> torch.Tensor:
    """uint8 (N, 3, size, size) patches of the bundled photos: the training split, the
    held-out split (`train=False`) or all (`train=None`); see the module docstring."""
    if size < 1 or not 0 < test_fraction < 1:
        raise ValueError(f"need size >= 1 and 0 < test_fraction < 1, got size={size}, "
                         f"test_fraction={test_fraction}")
    patches = np.concatenate([_grid(p, size) for p in sample_photos(scale)])
    if train is not None:
        patches = patches[split_indices(len(patches), test_fraction, train=train)]
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()
