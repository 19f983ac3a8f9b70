"""Data: datasets, the training transforms and the scalers to model space.

`Dataset.batch(step, ...)` returns the training batch of a step, a pure function of
(seed, rank, world, step), so a resumed run sees the same batches as an uninterrupted one.
Small sets (digits, toy sets, npz) are read whole into one tensor (uint8 images `(N, C, H, W)`
or float `(N, ...)`). Image folders and CIFAR-10 stream through a DataLoader by default
(`sde.data.stream`, `data.stream: true`): `Dataset(...)` then builds a `StreamingDataset`, with
the same interface and the same batches.

Image data (`levels` set: 17 for the 8x8 digits, 256 for 8-bit images) is mapped to [0, 1] as
x / (levels - 1), or with uniform dequantization as (x + u) / levels, u ~ U[0, 1); then to
[-1, 1] when `centered`. Continuous data (`levels: null`: toy sets, `npz`, the `oracle` mixture
of a run distilled from an exact teacher) is used as is.
Every dataset has a `fingerprint` (str) of its source, to tell a resume on other data.

Class labels (`data.labels: true`, digits and in-memory CIFAR-10): `labels` (N,) int64 and
`num_classes`; `batch_labels(step, ...)` gives the labels of the very examples of
`batch(step, ...)` (the same indices). Without them `labels` is None and `batch` is unchanged.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from sde.data import photos, sources, toy
from sde.data.sources import DataError

log = logging.getLogger("sde.data")

IMAGE_SOURCES = ("digits", "cifar10", "folder", "photos")
CONTINUOUS_SOURCES = ("npz", "oracle", *toy.TOY_SETS)
GENERATED_SOURCES = ("oracle", *toy.TOY_SETS)  # drawn from data.seed (held-out split: seed + 1)
STREAM_SOURCES = ("cifar10", "folder")
LABELLED_SOURCES = {"digits": 10, "cifar10": 10}  # name -> number of classes


def data_scalers(*, levels: int | None, centered: bool):
    """(scaler, inverse_scaler): [0, 1] images <-> model space ([-1, 1] if `centered`);
    identities for continuous data (`levels` None)."""
    if levels is None or not centered:
        return (lambda x: x), (lambda x: x)
    return (lambda x: 2.0 * x - 1.0), (lambda x: (x + 1.0) / 2.0)


def load_source(name: str, *, root=None, path=None, key=None, size=None, channels=3, n=100_000,
                seed=0, train=True, mixture=None) -> torch.Tensor:
    """The raw dataset `name` as one tensor (see the module docstring)."""
    if name == "digits":
        return sources.digits(train=train)
    if name == "cifar10":
        if root is None:
            raise ValueError("data=cifar10 needs data.root=FOLDER (holding cifar-10-batches-py)")
        return sources.cifar10(root, train=train)
    if name == "folder":
        if root is None:
            raise ValueError("data=folder needs data.root=FOLDER of images")
        return sources.image_folder(root, size=size, channels=channels)
    if name == "photos":
        return photos.photo_patches(size=size or 32, train=train)
    if name == "npz":
        if path is None:
            raise ValueError("data=npz needs data.path=FILE (.npz or .npy)")
        return sources.npz(path, key=key)
    if name in toy.TOY_SETS:
        return toy.toy_data(name, n, seed)
    if name == "oracle":
        if mixture is None:
            raise ValueError("data=oracle needs data.mixture={means, stds, weights} (sde.distill "
                             "writes it for an oracle teacher)")
        return toy.mixture_data(dict(mixture), n, seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{sorted(IMAGE_SOURCES + CONTINUOUS_SOURCES)}")


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def step_generator(seed: int, rank: int, step: int, stream: int, device="cpu") -> torch.Generator:
    """A generator for one (seed, rank, step, stream): stateless, hence exactly resumable."""
    return torch.Generator(device).manual_seed(_seed(seed, rank, step, stream))


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The order of a rank's shard of n examples in one epoch, (n,)."""
    return torch.randperm(n, generator=step_generator(seed, rank, epoch, 1))


def step_indices(n: int, step: int, batch_size: int, *, seed: int, rank: int = 0,
                 world: int = 1) -> torch.Tensor:
    """Indices of the batch at `step` for `rank` among n examples: epochs of random
    permutations of the rank's shard (examples rank, rank + world, ...), (batch_size,)."""
    shard = torch.arange(rank, n, world)
    if len(shard) == 0:
        raise ValueError(f"{n} examples cannot be sharded over {world} processes")
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // len(shard), positions % len(shard)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        mask = epochs == epoch
        out[mask] = shard[_epoch_permutation(len(shard), seed, rank, epoch)[offsets[mask]]]
    return out


def to_model_space(raw: torch.Tensor, generator=None, *, levels: int | None, centered: bool,
                   random_flip: bool, dequantize: bool) -> torch.Tensor:
    """Raw examples -> model space: flip, dequantize, scale (see the module docstring)."""
    x = raw.float()
    if levels is None:
        return x
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip.reshape(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
    if dequantize:
        x = (x + torch.rand(x.shape, generator=generator)) / levels
    else:
        x = x / (levels - 1)
    return 2.0 * x - 1.0 if centered else x


def check_finite(data: torch.Tensor, where: str) -> None:
    """A `DataError` naming the first row of `data` that holds NaN or Inf."""
    if not data.is_floating_point() or data.numel() == 0:
        return
    bad = (~torch.isfinite(data.reshape(len(data), -1))).any(1).nonzero().flatten()
    if len(bad):
        raise DataError(f"{where}: row {int(bad[0])} holds NaN or Inf ({len(bad)} of "
                        f"{len(data)} rows do, as float32); remove or repair those rows")


def _declared_input(model: torch.nn.Module) -> tuple | None:
    """The example shape a network declares: (in_channels, image_size, image_size) for the
    U-Nets, (dim,) for the MLP; None if it declares none."""
    if hasattr(model, "in_channels") and hasattr(model, "image_size"):
        return (int(model.in_channels), int(model.image_size), int(model.image_size))
    if hasattr(model, "dim"):
        return (int(model.dim),)
    return None


def check_model_input(model: torch.nn.Module, shape) -> None:
    """A clear error if the network does not take examples of `shape` (e.g. 1-channel data into
    a 3-channel network): checked against the shape it declares, else by one forward pass on
    zeros."""
    declared, fix = _declared_input(model), ("Match the model to the data (model.in_channels /"
                                             " model.image_size / model.dim) or pick other data")
    if declared is not None:
        if tuple(shape) != declared:
            raise DataError(f"the network takes examples shaped {list(declared)}, but the data "
                            f"is shaped {list(shape)} (data.shape). {fix}")
        return
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x, torch.full((1,), 0.5, device=x.device))
    except (RuntimeError, ValueError) as e:
        raise DataError(f"the network does not take data shaped {list(shape)} (data.shape): "
                        f"{str(e).splitlines()[0]}. {fix}") from None
    finally:
        model.train(was_training)


class Dataset:
    """A dataset with its training transforms; built from the `data` config section.

    In memory for small sets; for `folder` and `cifar10` with `stream` true (the default)
    `Dataset(...)` returns a `StreamingDataset`."""

    def __new__(cls, name: str = "", *args, stream: bool | None = None, labels: bool = False,
                **kwargs):
        if cls is Dataset and name in STREAM_SOURCES and stream is not False:
            if labels:
                raise DataError(f"data.labels=true reads data={name} into memory: also set "
                                "data.stream=false")
            from sde.data.stream import StreamingDataset

            return super().__new__(StreamingDataset)
        return super().__new__(cls)

    def __init__(self, name: str, shape=None, *, levels: int | None = None, centered: bool = True,
                 random_flip: bool = False, dequantize: bool = False, stream: bool | None = None,
                 workers: int = 0, prefetch: int = 2, pin_memory: bool | None = None,
                 labels: bool = False, **source_options):
        self._set_transforms(name, levels, centered, random_flip, dequantize)
        if stream:
            raise DataError(f"data.stream applies to {list(STREAM_SOURCES)}; data={name} is "
                            "read into memory (set data.stream=null)")
        self.data = load_source(name, **source_options)
        check_finite(self.data, f"data {name}" + (f" ({source_options['path']})"
                                                  if source_options.get("path") else ""))
        self._set_shape(tuple(self.data.shape[1:]), shape)
        self.fingerprint = self._fingerprint(name, source_options)
        self.labels, self.num_classes = self._labels(name, labels, source_options)

    def _labels(self, name: str, wanted: bool, source_options: dict):
        """(labels (N,) int64, num_classes) of the examples, or (None, None) if not `wanted`."""
        if not isinstance(wanted, bool):
            raise DataError(f"data.labels must be true or false, got {wanted!r}")
        if not wanted:
            return None, None
        if name not in LABELLED_SOURCES:
            raise DataError(f"data={name} has no class labels (data.labels=true needs one of "
                            f"{sorted(LABELLED_SOURCES)}); set data.labels=false")
        train = source_options.get("train", True)
        labels = (sources.digits_labels(train=train) if name == "digits"
                  else sources.cifar10_labels(source_options["root"], train=train))
        if len(labels) != len(self.data):
            raise DataError(f"data={name}: {len(labels)} labels for {len(self.data)} examples")
        return labels, LABELLED_SOURCES[name]

    def _set_transforms(self, name, levels, centered, random_flip, dequantize) -> None:
        self.name, self.levels, self.centered = name, levels, centered
        self.random_flip, self.dequantize = random_flip, dequantize
        if (random_flip or dequantize) and levels is None:
            raise ValueError(f"data={name} is continuous (levels: null): random_flip and "
                             "dequantize apply to images only")
        self.scaler, self.inverse_scaler = data_scalers(levels=levels, centered=centered)
        self._transform = functools.partial(
            to_model_space, levels=levels, centered=bool(centered) and levels is not None,
            random_flip=random_flip, dequantize=dequantize)

    def _set_shape(self, found: tuple, shape) -> None:
        if shape is not None and tuple(found) != tuple(shape):
            raise ValueError(f"data {self.name} has examples shaped {tuple(found)}, "
                             f"but data.shape is {list(shape)}; fix data.shape (or set it null)")
        self.shape = tuple(found)

    def _fingerprint(self, name: str, source_options: dict) -> str:
        if name == "folder":  # the same hash whether streamed or not
            from pathlib import Path

            root = Path(source_options["root"]).expanduser()
            return sources.files_fingerprint(root, sources.image_files(root))
        return sources.array_fingerprint(self.data)

    def __len__(self) -> int:
        return self.data.shape[0]

    def transform(self, raw: torch.Tensor, generator=None) -> torch.Tensor:
        """Raw examples -> model space: flip, dequantize, scale (see the module docstring)."""
        return self._transform(raw, generator)

    def indices(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """Indices of the batch at `step` for `rank` (`step_indices`), (batch_size,)."""
        return step_indices(len(self), step, batch_size, seed=seed, rank=rank, world=world)

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """The model-space training batch of `step` for `rank`, (batch_size, *shape)."""
        idx = self.indices(step, batch_size, seed=seed, rank=rank, world=world)
        return self.transform(self.data[idx], step_generator(seed, rank, step, 2))

    def batch_labels(self, step: int, batch_size: int, *, seed: int, rank: int = 0,
                     world: int = 1) -> torch.Tensor:
        """The class labels (batch_size,) of the examples of `batch(step, ...)` (same indices)."""
        if self.labels is None:
            raise DataError(f"data={self.name} was built without labels; set data.labels=true")
        return self.labels[self.indices(step, batch_size, seed=seed, rank=rank, world=world)]


__all__ = ["Dataset", "DataError", "LABELLED_SOURCES", "check_finite", "check_model_input", "data_scalers",
           "load_source", "sources", "step_generator", "step_indices", "to_model_space", "toy"]
