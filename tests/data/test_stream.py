"""Streaming image folders and CIFAR-10: the same batches as the in-memory path, for every step,
after any jump (a resume), with workers, per rank."""

import logging

import numpy as np
import pytest
import torch

from sde.data import Dataset, step_indices
from sde.data.stream import StreamingDataset

from .conftest import write_cifar, write_png_folder


def folder_data(root, **options):
    base = dict(shape=[3, 6, 6], levels=256, centered=True, size=None, root=str(root))
    return Dataset("folder", **{**base, **options})


def test_folder_streams_by_default_and_has_the_dataset_interface(png_folder):
    root, images = png_folder
    data = folder_data(root)
    assert isinstance(data, StreamingDataset) and len(data) == 20 and data.shape == (3, 6, 6)
    assert not isinstance(data.data, torch.Tensor)  # nothing decoded up front
    assert torch.equal(data.data[3], torch.from_numpy(images[3]))
    assert torch.equal(data.data[:5], torch.from_numpy(images[:5]))
    assert data.inverse_scaler(torch.tensor(1.0)) == 1.0  # centred: [-1, 1] -> [0, 1]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_indexed_pixels(png_folder, workers):
    root, images = png_folder
    data = folder_data(root, workers=workers)
    seen = []
    for step in range(6):  # 6 steps of 5 = 1.5 epochs
        idx = step_indices(20, step, 5, seed=3)
        x = data.batch(step, 5, seed=3)
        assert x.dtype == torch.float32 and x.shape == (5, 3, 6, 6)
        expected = torch.from_numpy(images[idx.numpy()]).double() / 255 * 2 - 1
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-6)
        seen += idx.tolist()
    assert sorted(seen[:20]) == list(range(20))  # the first epoch holds each image once
    data.loader.close()


def test_stream_equals_memory_with_flip_and_dequantization(png_folder):
    root, _ = png_folder
    options = dict(random_flip=True, dequantize=True)
    streamed, memory = folder_data(root, **options), folder_data(root, stream=False, **options)
    assert isinstance(memory.data, torch.Tensor)
    assert streamed.fingerprint == memory.fingerprint
    for step in (0, 1, 2, 7):
        for rank in (0, 1):
            a = streamed.batch(step, 4, seed=1, rank=rank, world=2)
            assert torch.equal(a, memory.batch(step, 4, seed=1, rank=rank, world=2))


def test_jumps_rebuild_the_iterator_at_the_requested_step(png_folder):
    """A resume at step k, or the evaluation batches in between, give the batch of step k."""
    root, _ = png_folder
    data, fresh = folder_data(root, random_flip=True), folder_data(root, random_flip=True)
    reference = {k: fresh.batch(k, 3, seed=0) for k in range(8)}  # in order, no jumps
    for k in (5, 6, 2, 3, 7):
        assert torch.equal(data.batch(k, 3, seed=0), reference[k])
        data.batch(0, 3, seed=1)  # an evaluation batch: another key
    assert torch.equal(data.batch(4, 3, seed=0), reference[4])


def test_ranks_split_each_epoch(png_folder):
    root, images = png_folder
    data = folder_data(root, centered=False)
    rows = {tuple(im.ravel()) for im in images}
    for rank in (0, 1):
        x = torch.cat([data.batch(k, 5, seed=0, rank=rank, world=2) for k in range(2)])
        got = {tuple(np.rint(im.numpy() * 255).astype(np.uint8).ravel()) for im in x}
        want = {tuple(images[i].ravel()) for i in range(rank, 20, 2)}
        assert got == want and got <= rows


def test_cifar10_streams_the_batches(tmp_path):
    images = write_cifar(tmp_path / "cifar-10-batches-py")
    data = Dataset("cifar10", [3, 32, 32], levels=256, centered=False, root=str(tmp_path),
                   workers=1)
    assert isinstance(data, StreamingDataset) and len(data) == 20
    for step in range(3):
        idx = step_indices(20, step, 8, seed=0)
        expected = torch.from_numpy(images[idx.numpy()]).float() / 255
        torch.testing.assert_close(data.batch(step, 8, seed=0), expected, rtol=0, atol=1e-7)
    memory = Dataset("cifar10", [3, 32, 32], levels=256, root=str(tmp_path), stream=False)
    assert memory.fingerprint == data.fingerprint
    data.loader.close()


def test_corrupt_image_is_replaced_logged_and_counted(tmp_path, caplog):
    root = tmp_path / "im"
    images = write_png_folder(root, 6)
    bad = sorted(root.rglob("*.png"))[2]  # the third image in the order of `images`
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    data = folder_data(root, centered=False)
    with caplog.at_level(logging.WARNING, logger="sde.data"):
        x = torch.cat([data.batch(k, 3, seed=0) for k in range(2)])  # one epoch
    got = sorted(tuple(np.rint(im.numpy() * 255).astype(np.uint8).ravel()) for im in x)
    want = sorted(tuple(images[i].ravel()) for i in (0, 1, 3, 3, 4, 5))  # 2 -> the next, 3
    assert got == want
    assert len(data.skipped) == 1 and str(bad) in next(iter(data.skipped))
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1  # once per file
    memory = Dataset("folder", [3, 6, 6], levels=256, root=str(root), size=None, stream=False)
    assert len(memory) == 5  # read into memory: the corrupt file is dropped


def test_image_of_another_size_names_the_file(tmp_path):
    from PIL import Image

    root = tmp_path / "im"
    write_png_folder(root, 4)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "odd.png")
    data = folder_data(root)
    with pytest.raises(ValueError, match=r"odd.png is 5x7.*data.size"):
        for k in range(3):
            data.batch(k, 4, seed=0)


def test_streaming_decodes_only_the_batches_asked_for(png_folder, monkeypatch):
    """Memory cannot grow with the folder: nothing is decoded up front, a batch decodes its own
    examples only (workers=0 keeps the count in this process)."""
    from sde.data import sources

    root, _ = png_folder
    reads = []
    real = sources.read_image
    monkeypatch.setattr(sources, "read_image", lambda path, **kw: reads.append(path) or
                        real(path, **kw))
    data = folder_data(root, size=6)
    assert reads == []  # data.size given: not even the first image is read
    data.batch(0, 4, seed=0)
    data.batch(1, 4, seed=0)
    assert len(reads) == 8


def test_a_killed_worker_is_restarted_at_the_same_step(png_folder):
    """A shutdown signal to the process group kills the workers; the final evaluation and
    checkpoint of the loop still get their batches."""
    import os
    import signal

    root, _ = png_folder
    data, fresh = folder_data(root, workers=1), folder_data(root, workers=0)
    data.batch(0, 4, seed=0)
    for worker in data.loader.iterator._workers:
        os.kill(worker.pid, signal.SIGKILL)
        worker.join()
    torch.testing.assert_close(data.batch(1, 4, seed=0), fresh.batch(1, 4, seed=0),
                               rtol=0, atol=0)
    data.loader.close()


@pytest.mark.parametrize("option", [{"workers": -1}, {"workers": "abc"}, {"prefetch": 0},
                                    {"workers": 1.5}, {"stream": "yes"}, {"pin_memory": 2}])
def test_loader_options_are_validated_with_the_key(png_folder, option):
    root, _ = png_folder
    with pytest.raises(ValueError, match=f"data.*{next(iter(option))}"):
        folder_data(root, **option)


def test_file_order_is_that_of_sorted_paths(tmp_path):
    """The order (hence the batches of runs made before streaming) is `sorted(Path)`'s."""
    from sde.data import sources

    for name in ("a/x.png", "a b/x.png", "a-b.png", "a.png", "A/z.JPG", "a/b/c.webp", "t.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    expected = sorted(p for p in tmp_path.rglob("*") if p.suffix.lower() in
                      sources.IMAGE_SUFFIXES)
    assert sources.image_files(tmp_path) == expected
    files = sources.FileList(tmp_path, sources.image_names(tmp_path))
    assert list(files) == expected and len(files) == 6


def test_workers_null_is_one_per_cpu_at_most_four(png_folder, monkeypatch):
    import os

    root, _ = png_folder
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert folder_data(root, workers=None).loader.workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert folder_data(root, workers=None).loader.workers == 4
