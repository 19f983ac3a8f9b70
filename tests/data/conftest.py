"""Made data for the data tests: small PNG folders (lossless, so the decoded pixels are known)
and fake CIFAR-10 batches in the real pickle format."""

import pickle
from pathlib import Path

import numpy as np
import pytest


def write_png_folder(root: Path, n: int, *, h: int = 6, w: int = 6, seed: int = 0) -> np.ndarray:
    """n random RGB PNGs im000.png... (half of them in a subfolder); returns them (n, 3, h, w)
    in the sorted order of their paths."""
    from PIL import Image

    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    (root / "b").mkdir(parents=True, exist_ok=True)
    paths = [root / ("b" if k >= n // 2 else ".") / f"im{k:03d}.png" for k in range(n)]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    order = sorted(range(n), key=lambda k: str(paths[k]))
    return images[order].transpose(0, 3, 1, 2)


def write_cifar(folder: Path, n_per_batch: int = 4, seed: int = 0, protocol: int = 2):
    """data_batch_1..5 and test_batch as CIFAR-10's pickled dicts; returns the train images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [1] * n_per_batch, b"data": data,
                 b"filenames": [b"x.png"] * n_per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        train.append(data) if name != "test_batch" else None
    return np.concatenate(train).reshape(-1, 3, 32, 32)


@pytest.fixture
def png_folder(tmp_path):
    root = tmp_path / "images"
    return root, write_png_folder(root, 20)
