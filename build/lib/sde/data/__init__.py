"""Data: in-memory datasets, the training transforms and the scalers to model space.

A dataset is read whole into one tensor (uint8 images `(N, C, H, W)` or float `(N, ...)`);
`Dataset.batch(step, ...)` returns the training batch of a step, a pure function of
(seed, rank, step), so a resumed run sees the same batches as an uninterrupted one.

Image data (`levels` set: 17 for the 8x8 digits, 256 for 8-bit images) is mapped to [0, 1] as
x / (levels - 1), or with uniform dequantization as (x + u) / levels, u ~ U[0, 1); then to
[-1, 1] when `centered`. Continuous data (`levels: null`: toy sets, `npz`) is used as is.
"""

from __future__ import annotations

import numpy as np
import torch

from sde.data import sources, toy

IMAGE_SOURCES = ("digits", "cifar10", "folder")
CONTINUOUS_SOURCES = ("npz", *toy.TOY_SETS)


def data_scalers(*, levels: int | None, centered: bool):
    """(scaler, inverse_scaler): [0, 1] images <-> model space ([-1, 1] if `centered`);
    identities for continuous data (`levels` None)."""
    if levels is None or not centered:
        return (lambda x: x), (lambda x: x)
    return (lambda x: 2.0 * x - 1.0), (lambda x: (x + 1.0) / 2.0)


def load_source(name: str, *, root=None, path=None, key=None, size=None, channels=3, n=100_000,
                seed=0, train=True) -> torch.Tensor:
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
    if name == "npz":
        if path is None:
            raise ValueError("data=npz needs data.path=FILE (.npz or .npy)")
        return sources.npz(path, key=key)
    if name in toy.TOY_SETS:
        return toy.toy_data(name, n, seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{sorted(IMAGE_SOURCES + CONTINUOUS_SOURCES)}")


def _seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def step_generator(seed: int, rank: int, step: int, stream: int, device="cpu") -> torch.Generator:
    """A generator for one (seed, rank, step, stream): stateless, hence exactly resumable."""
    return torch.Generator(device).manual_seed(_seed(seed, rank, step, stream))


class Dataset:
    """A dataset in memory with its training transforms; built from the `data` config section."""

    def __init__(self, name: str, shape=None, *, levels: int | None = None, centered: bool = True,
                 random_flip: bool = False, dequantize: bool = False, **source_options):
        self.name, self.levels, self.centered = name, levels, centered
        self.random_flip, self.dequantize = random_flip, dequantize
        if (random_flip or dequantize) and levels is None:
            raise ValueError(f"data={name} is continuous (levels: null): random_flip and "
                             "dequantize apply to images only")
        self.data = load_source(name, **source_options)
        if shape is not None and tuple(self.data.shape[1:]) != tuple(shape):
            raise ValueError(f"data {name} has examples shaped {tuple(self.data.shape[1:])}, "
                             f"but data.shape is {list(shape)}; fix data.shape (or set it null)")
        self.shape = tuple(self.data.shape[1:])
        self.scaler, self.inverse_scaler = data_scalers(levels=levels, centered=centered)

    def __len__(self) -> int:
        return self.data.shape[0]

    def transform(self, raw: torch.Tensor, generator=None) -> torch.Tensor:
        """Raw examples -> model space: flip, dequantize, scale (see the module docstring)."""
        if self.levels is None:
            return raw.float()
        x = raw.float()
        if self.random_flip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip.reshape(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        if self.dequantize:
            x = (x + torch.rand(x.shape, generator=generator)) / self.levels
        else:
            x = x / (self.levels - 1)
        return self.scaler(x)

    def indices(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """Indices of the batch at `step` for `rank`: epochs of random permutations of the
        rank's shard (examples rank, rank + world, ...), (batch_size,)."""
        shard = torch.arange(rank, len(self), world)
        if len(shard) == 0:
            raise ValueError(f"{len(self)} examples cannot be sharded over {world} processes")
        positions = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = positions // len(shard), positions % len(shard)
        out = torch.empty(batch_size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            perm = torch.randperm(len(shard), generator=step_generator(seed, rank, epoch, 1))
            mask = epochs == epoch
            out[mask] = shard[perm[offsets[mask]]]
        return out

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """The model-space training batch of `step` for `rank`, (batch_size, *shape)."""
        idx = self.indices(step, batch_size, seed=seed, rank=rank, world=world)
        return self.transform(self.data[idx], step_generator(seed, rank, step, 2))


__all__ = ["Dataset", "data_scalers", "load_source", "step_generator", "sources", "toy"]
