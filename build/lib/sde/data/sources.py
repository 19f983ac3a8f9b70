"""Readers that return a whole dataset as one tensor: uint8 `(N, C, H, W)` images or float
`(N, ...)` continuous data. Nothing here downloads."""

from __future__ import annotations

import importlib.util
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


DIGITS_TEST = 297  # held-out digits (1500 train / 297 test, a fixed random split)


def digits(*, train: bool | None = True) -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits (values 0..16), uint8 (N, 1, 8, 8): the 1500 training
    images, the 297 held-out test images (`train=False`), or all 1797 (`train=None`); the split
    is a fixed permutation (seed 0).

    Read straight from sklearn's `datasets/data/digits.csv.gz` (what `load_digits` reads),
    which spares the slow `import sklearn`."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("data=digits needs scikit-learn (pip install scikit-learn)")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)  # (N, 65): pixels, label
    else:  # a future layout: let sklearn find it
        from sklearn.datasets import load_digits

        table = load_digits().data
    images = torch.from_numpy(table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8))  # 0..16
    if train is None:
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[DIGITS_TEST:] if train else order[:DIGITS_TEST]]


def _cifar_batches_from_dir(folder: Path, names) -> list[dict]:
    return [_unpickle((folder / name).read_bytes()) for name in names]


def _unpickle(raw: bytes) -> dict:
    return pickle.loads(raw, encoding="bytes")


def _cifar_batches_from_tar(archive: Path, names) -> list[dict]:
    with tarfile.open(archive, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        missing = [n for n in names if n not in members]
        if missing:
            raise FileNotFoundError(f"{archive} lacks {missing}; is it cifar-10-python.tar.gz?")
        return [_unpickle(tar.extractfile(members[n]).read()) for n in names]


def cifar10(root: str | Path, *, train: bool = True) -> torch.Tensor:
    """CIFAR-10 from the python-pickle batches at `root`, uint8 (N, 3, 32, 32).

    `root` may be the folder `cifar-10-batches-py`, a folder holding it, or holding
    `cifar-10-python.tar.gz`, or the `.tar.gz` itself.
    """
    names = CIFAR10_TRAIN if train else CIFAR10_TEST
    root = Path(root).expanduser()
    candidates = [root, root / "cifar-10-batches-py"]
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            batches = _cifar_batches_from_dir(folder, names)
            break
    else:
        archives = [root] if root.is_file() else [root / "cifar-10-python.tar.gz"]
        archive = next((a for a in archives if a.is_file()), None)
        if archive is None:
            raise FileNotFoundError(
                f"CIFAR-10 not found: expected {', '.join(names)} in {candidates[0]} or "
                f"{candidates[1]}, or the archive {root / 'cifar-10-python.tar.gz'}. Download "
                f"'CIFAR-10 python version' (cifar-10-python.tar.gz) from {CIFAR10_URL} and set "
                f"data.root to the folder holding it (or the extracted cifar-10-batches-py)."
            )
        batches = _cifar_batches_from_tar(archive, names)
    data = np.concatenate([b[b"data"] for b in batches]).astype(np.uint8)  # (N, 3072)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32))


def image_folder(root: str | Path, *, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """Every image under `root` (recursively), centre-cropped and resized to `size`, uint8
    (N, C, H, W)."""
    from PIL import Image

    root = Path(root).expanduser()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}; "
                                "set data.root to a folder of images")
    mode = {1: "L", 3: "RGB"}[channels]
    arrays = [_load_image(Image.open(f).convert(mode), size) for f in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} have different sizes {sorted(shapes)}; "
                         "set data.size to resize them")
    images = torch.from_numpy(np.stack(arrays))  # (N, C, H, W) or (N, H, W)
    return images if images.ndim == 4 else images.unsqueeze(1)


def _load_image(image, size: int | None) -> np.ndarray:
    """Centre-crop to a square and resize to size x size, (H, W, C) or (H, W) uint8."""
    if size is not None:
        w, h = image.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        image = image.crop(box).resize((size, size), resample=3)  # 3 = BICUBIC
    array = np.asarray(image, dtype=np.uint8)
    return array.transpose(2, 0, 1) if array.ndim == 3 else array


def npz(path: str | Path, *, key: str | None = None) -> torch.Tensor:
    """A float array (N, ...) from a `.npz` (the key `key`, or its only/first array) or `.npy`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found; set data.path=FILE (.npz or .npy)")
    loaded = np.load(path)
    if isinstance(loaded, np.ndarray):
        array = loaded
    else:
        keys = list(loaded.keys())
        if key is None and not keys:
            raise ValueError(f"{path} holds no arrays")
        if key is not None and key not in keys:
            raise ValueError(f"{path} has no array {key!r}; it has {keys} (set data.key)")
        array = loaded[key or keys[0]]
    if array.ndim < 2:
        raise ValueError(f"{path}: expected an array (N, ...) of N examples, got {array.shape}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32))
