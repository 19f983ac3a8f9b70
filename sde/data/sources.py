"""Readers of the data sources: whole-dataset tensors (uint8 `(N, C, H, W)` images or float
`(N, ...)` continuous data) and the per-file image reader the streaming path uses. Nothing here
downloads. Every failure of a file is a `DataError` naming the file and the fix."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("sde.data")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGE_MODES = {1: "L", 3: "RGB"}  # data.channels -> PIL mode


class DataError(ValueError):
    """A data file or array that cannot be used; the message names it and the fix."""


DIGITS_TEST = 297  # held-out digits (1500 train / 297 test, a fixed random split)


def _digits_table() -> np.ndarray:
    """sklearn's `datasets/data/digits.csv.gz` (what `load_digits` reads), (1797, 65): 64 pixels
    (0..16) then the label (0..9); read straight, which spares the slow `import sklearn`."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("data=digits needs scikit-learn (pip install scikit-learn)")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        return np.loadtxt(csv, delimiter=",", dtype=np.float64)  # (N, 65): pixels, label
    from sklearn.datasets import load_digits  # a future layout: let sklearn find it

    bunch = load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


def _digits_split(n: int, train: bool | None) -> torch.Tensor:
    """Row indices of the fixed digits split (a seed-0 permutation; all rows if `train` None)."""
    if train is None:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[DIGITS_TEST:] if train else order[:DIGITS_TEST]


def digits(*, train: bool | None = True) -> torch.Tensor:
    """scikit-learn's bundled 8x8 digits (values 0..16), uint8 (N, 1, 8, 8): the 1500 training
    images, the 297 held-out test images (`train=False`), or all 1797 (`train=None`); the split
    is a fixed permutation (seed 0)."""
    table = _digits_table()
    images = torch.from_numpy(table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8))  # 0..16
    return images[_digits_split(len(images), train)]


def digits_labels(*, train: bool | None = True) -> torch.Tensor:
    """The class (0..9) of each image of `digits(train=...)`, in the same order, int64 (N,)."""
    table = _digits_table()
    labels = torch.from_numpy(table[:, 64].astype(np.int64))
    return labels[_digits_split(len(labels), train)]


# --- CIFAR-10 ----------------------------------------------------------------------------------
def _numpy_global(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _cifar_globals() -> dict:
    """The only globals a CIFAR-10 batch pickle needs: numpy's array and dtype reconstructors
    (numpy 1 `numpy.core` and numpy 2 `numpy._core` spellings) and `_codecs.encode` (bytes in
    protocol-2 pickles written by Python 3)."""
    import codecs

    core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
    reconstruct = _numpy_global(f"{core}.multiarray", "_reconstruct")
    frombuffer = _numpy_global(f"{core}.numeric", "_frombuffer")
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}
    for spelling in ("numpy.core", "numpy._core"):
        allowed[(f"{spelling}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{spelling}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes/str and numpy arrays, and nothing else."""

    def find_class(self, module: str, name: str):
        allowed = _cifar_globals()
        if (module, name) not in allowed:
            raise DataError(f"{module}.{name}")
        return allowed[(module, name)]


def _unpickle(raw: bytes, where: str) -> dict:
    """One CIFAR-10 batch (a dict) from pickle bytes, refusing any other global than numpy's."""
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{where} is not a CIFAR-10 batch: its pickle calls the global {e}, "
                        "which could run code; it was refused. Use the official "
                        f"cifar-10-python.tar.gz from {CIFAR10_URL}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of an untrusted file
        raise DataError(f"{where} is corrupt or truncated ({type(e).__name__}: {e}); "
                        f"download cifar-10-python.tar.gz again from {CIFAR10_URL}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DataError(f"{where} is not a CIFAR-10 batch: expected a dict whose b'data' is a "
                        f"uint8 array (N, 3072), got {_describe(batch)}")
    return batch


def _describe(batch) -> str:
    if not isinstance(batch, dict):
        return type(batch).__name__
    data = batch.get(b"data")
    return (f"b'data' {getattr(data, 'dtype', type(data).__name__)} "
            f"{getattr(data, 'shape', '')}" if data is not None else f"keys {list(batch)}")


def _cifar_batches_from_dir(folder: Path, names) -> list[dict]:
    return [_unpickle((folder / name).read_bytes(), str(folder / name)) for name in names]


def _cifar_batches_from_tar(archive: Path, names) -> list[dict]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise FileNotFoundError(
                    f"{archive} lacks {missing}; is it cifar-10-python.tar.gz?")
            raws = [tar.extractfile(members[n]).read() for n in names]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(f"{archive} is corrupt or truncated ({type(e).__name__}: {e}); "
                        f"download cifar-10-python.tar.gz again from {CIFAR10_URL}") from None
    return [_unpickle(raw, f"{archive}:{name}") for raw, name in zip(raws, names)]


def cifar10(root: str | Path, *, train: bool = True) -> torch.Tensor:
    """CIFAR-10 from the python-pickle batches at `root`, uint8 (N, 3, 32, 32).

    `root` may be the folder `cifar-10-batches-py`, a folder holding it, or holding
    `cifar-10-python.tar.gz`, or the `.tar.gz` itself. The pickles are read by a restricted
    unpickler (numpy arrays, dicts, lists, bytes only), so a doctored file cannot run code.
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
    data = np.concatenate([b[b"data"] for b in batches])  # (N, 3072) uint8
    return torch.from_numpy(data.reshape(-1, 3, 32, 32))


def cifar10_labels(root: str | Path, *, train: bool = True) -> torch.Tensor:
    """The class (0..9) of each image of `cifar10(root, train=...)`, same order, int64 (N,)."""
    names = CIFAR10_TRAIN if train else CIFAR10_TEST
    root = Path(root).expanduser()
    for folder in (root, root / "cifar-10-batches-py"):
        if all((folder / n).is_file() for n in names):
            batches = _cifar_batches_from_dir(folder, names)
            break
    else:
        archive = root if root.is_file() else root / "cifar-10-python.tar.gz"
        if not archive.is_file():
            cifar10(root, train=train)  # raises its FileNotFoundError naming the fix
        batches = _cifar_batches_from_tar(archive, names)
    return torch.from_numpy(np.concatenate([np.asarray(b[b"labels"]) for b in batches])).long()


# --- image folders -----------------------------------------------------------------------------
def image_names(root: str | Path) -> list[str]:
    """The image files under `root` (recursively) as relative POSIX names, in the order of
    their paths (that of `sorted(Path, ...)`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no images: the folder {root} does not exist; set data.root "
                                "to a folder of images")
    names = []
    for folder, _, files in os.walk(root, followlinks=True):
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        names += [prefix + f for f in files if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}; "
                                "set data.root to a folder of images")
    return sorted(names, key=lambda name: name.split("/"))


def image_files(root: str | Path) -> list[Path]:
    """The image files under `root` (recursively), sorted."""
    root = Path(root).expanduser()
    return [root / name for name in image_names(root)]


class FileList:
    """Many relative file names in two arrays (one byte string and its offsets), not a list of
    Python strings: about (name length + 8) bytes a file, and nothing that DataLoader workers
    copy on access."""

    def __init__(self, root: Path, names: list[str]):
        encoded = [n.encode() for n in names]
        self.root = root
        self.offsets = np.cumsum([0] + [len(b) for b in encoded], dtype=np.int64)
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def name(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()

    def __getitem__(self, i: int) -> Path:
        return self.root / self.name(i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def files_fingerprint(root: Path, files) -> str:
    """A cheap hash of a file list: relative names and sizes."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\t{f.stat().st_size}\n".encode())
    return f"files:{h.hexdigest()}"


def array_fingerprint(array: torch.Tensor) -> str:
    """A hash of an in-memory array: dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{array.dtype}{tuple(array.shape)}".encode())
    h.update(array.contiguous().numpy().tobytes() if array.numel() else b"")
    return f"array:{h.hexdigest()}"


def image_mode(channels: int) -> str:
    """The PIL mode of `data.channels`."""
    if channels not in IMAGE_MODES:
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return IMAGE_MODES[channels]


def read_image(path: Path, *, size: int | None, channels: int) -> np.ndarray:
    """One image, centre-cropped and resized to size x size, uint8 (C, H, W); a `DataError`
    naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = _load_image(image.convert(image_mode(channels)), size)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImage(path, e) from None
    return array if array.ndim == 3 else array[None]


class CorruptImage(DataError):
    """An image file that does not decode."""

    def __init__(self, path: Path, error: Exception):
        super().__init__(f"{path} is not a readable image ({type(error).__name__}: {error})")
        self.path = path


def image_folder(root: str | Path, *, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """Every readable image under `root` (recursively), centre-cropped and resized to `size`,
    uint8 (N, C, H, W). Corrupt files are dropped, each with a logged warning."""
    root = Path(root).expanduser()
    image_mode(channels)
    arrays, shapes = [], {}
    for f in image_files(root):
        try:
            a = read_image(f, size=size, channels=channels)
        except CorruptImage as e:
            log.warning("%s; it is left out of the data set", e)
            continue
        arrays.append(a)
        shapes.setdefault(a.shape, f)
    if not arrays:
        raise DataError(f"no readable image under {root}")
    if len(shapes) > 1:
        raise DataError(f"images under {root} have different sizes: "
                        + ", ".join(f"{s} ({f})" for s, f in shapes.items())
                        + "; set data.size to resize them")
    return torch.from_numpy(np.stack(arrays))  # (N, C, H, W)


def _load_image(image, size: int | None) -> np.ndarray:
    """Centre-crop to a square and resize to size x size, (H, W, C) or (H, W) uint8."""
    if size is not None:
        w, h = image.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        image = image.crop(box).resize((size, size), resample=3)  # 3 = BICUBIC
    array = np.array(image, dtype=np.uint8)  # a writable copy
    return array.transpose(2, 0, 1) if array.ndim == 3 else array


# --- arrays ------------------------------------------------------------------------------------
def npz(path: str | Path, *, key: str | None = None) -> torch.Tensor:
    """A float array (N, ...) from a `.npz` (the key `key`, or its only/first array) or `.npy`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found; set data.path=FILE (.npz or .npy)")
    try:
        loaded = np.load(path)
        if isinstance(loaded, np.ndarray):
            array, where = loaded, str(path)
        else:
            with loaded:
                keys = list(loaded.keys())
                if key is None and not keys:
                    raise DataError(f"{path} holds no arrays")
                if key is not None and key not in keys:
                    raise DataError(f"{path} has no array {key!r}; it has {keys} (set data.key)")
                array, where = loaded[key or keys[0]], f"{path} (key {key or keys[0]!r})"
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, gzip.BadGzipFile,
            pickle.UnpicklingError) as e:
        raise DataError(f"{path} is not a readable .npz/.npy array file, or is truncated "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "write it again with numpy.savez / numpy.save") from None
    return torch.from_numpy(_real_array(array, where))


def _real_array(array: np.ndarray, where: str) -> np.ndarray:
    """`array` as float32 (N, ...), refusing complex, non-numeric and 0-/1-D arrays."""
    if np.iscomplexobj(array):
        raise DataError(f"{where} is complex ({array.dtype}); the SDEs need real data: store "
                        "the real and imaginary parts as separate features")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{where} has dtype {array.dtype}, not a number; store a float array")
    if array.ndim < 2:
        raise DataError(f"{where}: expected an array (N, ...) of N examples, got {array.shape}")
    with np.errstate(over="ignore"):  # |x| > 3.4e38 becomes inf: `check_finite` names the row
        return np.asarray(array, dtype=np.float32)
