"""Streaming datasets: image folders (decoded per batch) and CIFAR-10 through a
`torch.utils.data.DataLoader` (worker processes, pinned memory, prefetch).

Item `k` of `StepBatches` is the whole model-space batch of step `k`: its indices come from
`step_indices` (a pure function of (seed, rank, world, step)) in the main process, a worker
decodes and transforms them with the step's generator. So a streamed batch equals the batch the
in-memory path gives for the same files, and a resumed run sees the same batches. The loader
iterator stays positioned at the next step; a request for any other step (a resume, the fixed
evaluation batches) rebuilds it there.

Corrupt images are skipped: the example is replaced by the next readable file (a fixed rule,
so batches stay reproducible) and each skipped file is logged once and counted in `skipped`.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.utils.data as tud

from sde.data import Dataset, sources

log = logging.getLogger("sde.data")


class ImageFiles:
    """The images of a folder, decoded one at a time: item i is uint8 (C, H, W)."""

    def __init__(self, root, *, size: int | None, channels: int):
        self.root = Path(root).expanduser()
        sources.image_mode(channels)
        self.size, self.channels = size, channels
        self.files = sources.FileList(self.root, sources.image_names(self.root))
        self.shape = self._first_shape()

    def _first_shape(self) -> tuple[int, ...]:
        if self.size is not None:
            return (self.channels, self.size, self.size)
        return tuple(self.read(0)[0].shape)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[np.ndarray, list[str]]:
        """Image i, or the next readable one after it; also the corrupt files passed over."""
        skipped = []
        for j in itertools.islice(itertools.count(i), len(self.files)):
            path = self.files[j % len(self.files)]
            try:
                array = sources.read_image(path, size=self.size, channels=self.channels)
            except sources.CorruptImage as e:
                skipped.append(str(e))
                continue
            if hasattr(self, "shape") and array.shape != self.shape:
                raise sources.DataError(
                    f"{path} is {array.shape[1]}x{array.shape[2]} (channels {array.shape[0]}), "
                    f"the other images {self.shape[1]}x{self.shape[2]}; set data.size to "
                    "resize them all")
            return array, skipped
        raise sources.DataError(f"no readable image under {self.root}")

    def fingerprint(self) -> str:
        return sources.files_fingerprint(self.root, self.files)


class TensorExamples:
    """Examples already in memory (CIFAR-10's uint8 array): item i is (C, H, W)."""

    def __init__(self, data: torch.Tensor):
        self.data, self.shape = data, tuple(data.shape[1:])

    def __len__(self) -> int:
        return self.data.shape[0]

    def read(self, i: int) -> tuple[torch.Tensor, list[str]]:
        return self.data[i], []

    def fingerprint(self) -> str:
        return sources.array_fingerprint(self.data)


class LazyExamples:
    """`dataset.data` of a folder: raw examples read on indexing, uint8 (n, C, H, W)."""

    def __init__(self, examples: ImageFiles):
        self.examples = examples
        self.shape = (len(examples), *examples.shape)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return torch.as_tensor(self.examples.read(index)[0])
        idx = torch.arange(len(self))[index].reshape(-1)
        return torch.stack([self[i] for i in idx.tolist()]) if len(idx) else \
            torch.empty((0, *self.examples.shape), dtype=torch.uint8)


class StepBatches(tud.Dataset):
    """Item (step, indices): the model-space batch of that step, (B, *shape), with the corrupt
    files passed over and an error message (raised in the main process) if any."""

    def __init__(self, examples, transform, *, seed: int, rank: int):
        self.examples, self.transform, self.seed, self.rank = examples, transform, seed, rank

    def __getitem__(self, key):
        from sde.data import step_generator

        step, idx = key
        try:
            raws, skipped = zip(*(self.examples.read(i) for i in idx.tolist()))
        except sources.DataError as e:
            return None, [], str(e)
        raw = torch.stack([torch.as_tensor(r) for r in raws])  # (B, C, H, W) uint8
        x = self.transform(raw, step_generator(self.seed, self.rank, step, 2))
        return x, [s for group in skipped for s in group], None


class StepSampler(tud.Sampler):
    """(step, indices) for steps start, start + 1, ... (endless)."""

    def __init__(self, indices, start: int):
        self.indices, self.start = indices, start

    def __iter__(self):
        for step in itertools.count(self.start):
            yield step, self.indices(step)


def _keep(item):
    return item


class Loader:
    """A DataLoader iterator over StepBatches, positioned at the next step of one key
    (batch_size, seed, rank, world); rebuilt at a step or key it is not at."""

    def __init__(self, *, workers: int | None, prefetch: int, pin_memory: bool):
        workers = _default_workers() if workers is None else workers
        for key, value, least in (("workers", workers, 0), ("prefetch", prefetch, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise sources.DataError(f"data.{key} must be an integer >= {least}, got "
                                        f"{value!r}")
        self.workers, self.prefetch, self.pin_memory = workers, prefetch, pin_memory
        self.iterator, self.position = None, None

    def next(self, examples, transform, indices, step: int, key: tuple):
        """The StepBatches item of `step` for `key`; workers that died (a signal sent to the
        whole process group on shutdown) are restarted once."""
        for attempt in (0, 1):
            if self.iterator is None or self.position != (key, step):
                self.start(examples, transform, indices, step, key)
            try:
                item = next(self.iterator)
                break
            except RuntimeError as e:
                self.close()
                if attempt or "DataLoader worker" not in str(e):
                    raise
                log.warning("restarting the data loader: %s", str(e).splitlines()[0])
        self.position = (key, step + 1)
        return item

    def start(self, examples, transform, indices, step: int, key: tuple) -> None:
        """A new iterator whose first item is the batch of `step`."""
        self.close()
        batch_size, seed, rank, world = key
        loader = tud.DataLoader(
            StepBatches(examples, transform, seed=seed, rank=rank),
            sampler=StepSampler(lambda k: indices(k, batch_size, seed=seed, rank=rank,
                                                  world=world), step),
            batch_size=None, collate_fn=_keep, num_workers=self.workers,
            pin_memory=self.pin_memory, prefetch_factor=self.prefetch if self.workers else None)
        self.iterator, self.position = iter(loader), (key, step)

    def close(self) -> None:
        """Stop the worker processes (they restart on the next request)."""
        if self.iterator is not None and hasattr(self.iterator, "_shutdown_workers"):
            self.iterator._shutdown_workers()
        self.iterator, self.position = None, None


def _default_workers() -> int:
    """`data.workers: null`: one worker per usable CPU, at most 4."""
    return min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _default_pin_memory(pin_memory: bool | None) -> bool:
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


class StreamingDataset(Dataset):
    """An image folder or CIFAR-10 read through a DataLoader: the interface of `Dataset`
    (`batch`, `indices`, `shape`, `transform`, `inverse_scaler`, `fingerprint`, `data`), with
    at most (workers x prefetch) batches decoded ahead; memory does not grow with the folder."""

    def __init__(self, name: str, shape=None, *, levels: int | None = None, centered: bool = True,
                 random_flip: bool = False, dequantize: bool = False, stream: bool | None = None,
                 workers: int | None = 0, prefetch: int = 2, pin_memory: bool | None = None,
                 root=None, size: int | None = None, channels: int = 3, train: bool = True):
        self._set_transforms(name, levels, centered, random_flip, dequantize)
        if not isinstance(stream, bool | None) or not isinstance(pin_memory, bool | None):
            raise sources.DataError(f"data.stream and data.pin_memory must be true, false or "
                                    f"null, got {stream!r} and {pin_memory!r}")
        if root is None:
            raise ValueError(f"data={name} needs data.root=FOLDER")
        if name == "folder":
            self.examples = ImageFiles(root, size=size, channels=channels)
            self.data = LazyExamples(self.examples)
        else:  # CIFAR-10 (180 MB) is held as its uint8 array, served by the loader
            self.examples = TensorExamples(sources.cifar10(root, train=train))
            self.data = self.examples.data
        self._set_shape(self.examples.shape, shape)
        self.fingerprint = self.examples.fingerprint()
        self.skipped: set[str] = set()  # corrupt files passed over so far (this process)
        self.loader = Loader(workers=workers, prefetch=prefetch,
                             pin_memory=_default_pin_memory(pin_memory))

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, step: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        """The model-space training batch of `step` for `rank`, (batch_size, *shape)."""
        key = (batch_size, seed, rank, world)
        x, skipped, error = self.loader.next(self.examples, self._transform, self.indices,
                                             step, key)
        if error is not None:
            self.loader.close()
            raise sources.DataError(error)
        for message in skipped:
            if message not in self.skipped:
                self.skipped.add(message)
                log.warning("skipped a corrupt image (%d so far): %s", len(self.skipped),
                            message)
        return x
