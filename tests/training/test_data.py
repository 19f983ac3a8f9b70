"""Data readers on made files, transforms and per-rank batching."""

import tarfile

import numpy as np
import pytest
import torch

from sde.data import Dataset, data_scalers, load_source, sources, toy


@pytest.mark.parametrize("name", sorted(toy.TOY_SETS))
def test_toy_sets_are_seeded_2d(name):
    x = toy.toy_data(name, 500, seed=1)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, toy.toy_data(name, 500, seed=1))
    assert not torch.equal(x, toy.toy_data(name, 500, seed=2))
    assert x.abs().max() < 4


def test_checkerboard_occupies_alternate_squares():
    x = toy.toy_data("checkerboard", 4000)
    cell = torch.floor(x + 2).long()  # 4 x 4 unit squares
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_digits_scaled_to_minus_one_one():
    raw = sources.digits()
    assert raw.shape == (1500, 1, 8, 8) and raw.dtype == torch.uint8 and raw.max() == 16
    data = Dataset("digits", [1, 8, 8], levels=17, centered=True)
    x = data.transform(raw[:50])
    torch.testing.assert_close(x, raw[:50].float() / 8 - 1)
    torch.testing.assert_close(data.inverse_scaler(x), raw[:50].float() / 16)


def test_digits_split_is_fixed_and_disjoint():
    train, test, every = sources.digits(), sources.digits(train=False), sources.digits(train=None)
    assert every.shape == (1797, 1, 8, 8) and test.shape == (297, 1, 8, 8)
    torch.testing.assert_close(train, sources.digits())  # the same split every time
    rows = {tuple(x.flatten().tolist()) for x in every}
    assert {tuple(x.flatten().tolist()) for x in torch.cat([train, test])} == rows
    assert sorted(map(tuple, torch.cat([train, test]).flatten(1).tolist())) == sorted(
        map(tuple, every.flatten(1).tolist()))


def test_dequantize_and_flip_stay_in_range_and_are_seeded():
    data = Dataset("digits", [1, 8, 8], levels=17, centered=False, dequantize=True,
                   random_flip=True)
    raw = data.data[:64]
    x = data.transform(raw, torch.Generator().manual_seed(0))
    assert 0 <= x.min() and x.max() < 1
    lower = torch.minimum(raw.float(), raw.flip(-1).float()) / 17
    assert (x >= lower - 1e-6).all()
    torch.testing.assert_close(x, data.transform(raw, torch.Generator().manual_seed(0)))
    # the level of each pixel survives dequantization: floor(17 x) is the raw value or its mirror
    levels = torch.floor(x * 17)
    assert ((levels == raw.float()) | (levels == raw.flip(-1).float())).all()


def test_scalers_identity_for_continuous_data():
    s, inv = data_scalers(levels=None, centered=True)
    x = torch.randn(3, 2)
    assert torch.equal(s(x), x) and torch.equal(inv(x), x)


def test_cifar10_from_folder_and_tar(fake_cifar, tmp_path):
    root, expected = fake_cifar
    for where in (root, root / "cifar-10-batches-py"):
        x = sources.cifar10(where)
        assert x.shape == (30, 3, 32, 32) and x.dtype == torch.uint8
        np.testing.assert_array_equal(x.numpy(), expected)
    assert sources.cifar10(root, train=False).shape == (6, 3, 32, 32)
    archive = tmp_path / "tar" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for where in (archive.parent, archive):
        np.testing.assert_array_equal(sources.cifar10(where).numpy(), expected)


def test_missing_cifar10_names_files_folder_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_source("cifar10", root=tmp_path / "nowhere")
    message = str(info.value)
    for needle in ("data_batch_1", "cifar-10-python.tar.gz", str(tmp_path / "nowhere"),
                   "https://www.cs.toronto.edu/~kriz/cifar.html", "data.root"):
        assert needle in message


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    for k, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / ("sub" if k else ".") / f"im{k}.png")
    x = sources.image_folder(tmp_path, size=None)
    assert x.shape == (3, 3, 12, 16)
    assert {tuple(a.transpose(2, 0, 1).ravel()) for a in arrays} == {
        tuple(im.ravel().tolist()) for im in x.numpy()}
    assert sources.image_folder(tmp_path, size=8).shape == (3, 3, 8, 8)
    assert sources.image_folder(tmp_path, size=8, channels=1).shape == (3, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="no images"):
        sources.image_folder(tmp_path / "sub" / "none")


def test_npz_reader(tmp_path):
    a = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float64)
    np.savez(tmp_path / "d.npz", other=np.zeros((2, 2)), x=a)
    data = Dataset("npz", None, path=str(tmp_path / "d.npz"), key="x", centered=False)
    assert data.shape == (3,)
    torch.testing.assert_close(data.transform(data.data), torch.from_numpy(a).float())
    np.save(tmp_path / "d.npy", a)
    assert load_source("npz", path=tmp_path / "d.npy").shape == (10, 3)
    with pytest.raises(ValueError, match="has no array 'y'"):
        load_source("npz", path=tmp_path / "d.npz", key="y")
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_source("npz", path=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="data.shape"):
        Dataset("npz", [4], path=str(tmp_path / "d.npy"))


def test_batches_shard_and_cover_each_epoch():
    data = Dataset("two_moons", [2], n=50)
    world, bs = 2, 5
    for rank in range(world):
        idx = torch.cat([data.indices(s, bs, seed=0, rank=rank, world=world) for s in range(5)])
        assert sorted(idx.tolist()) == list(range(rank, 50, world))  # one epoch: each once
        assert torch.equal(idx, torch.cat([data.indices(s, bs, seed=0, rank=rank, world=world)
                                           for s in range(5)]))
    a = data.indices(7, bs, seed=0)
    assert not torch.equal(a, data.indices(7, bs, seed=1))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_source("mnist")


def test_training_refuses_data_the_network_cannot_take_before_writing(tmp_path):
    from sde.data import DataError
    from sde.train import run

    from .conftest import FAST, TINY, compose_train

    cfg = compose_train(["experiment=vp_toy", "data=digits", "trainer.steps=2", *FAST,
                         *TINY["mlp"]])
    with pytest.raises(DataError, match=r"takes examples shaped \[2\], but the data is "
                       r"shaped \[1, 8, 8\].*model.dim"):
        run(cfg, tmp_path / "run")
    run_dir = tmp_path / "run"  # refused before anything is written (the folder is only claimed)
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


def test_streaming_folder_trains_and_resumes_bit_identically(tmp_path):
    """Two steps, then two more after a resume, equal four uninterrupted steps."""
    from PIL import Image

    from sde.train import run

    from .conftest import FAST, TINY, compose_train

    (tmp_path / "im").mkdir()
    for k, a in enumerate(np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), np.uint8)):
        Image.fromarray(a).save(tmp_path / "im" / f"{k:02d}.png")
    base = ["experiment=vp_digits", "data=folder", f"data.root={tmp_path / 'im'}",
            "data.size=8", "data.shape=[3,8,8]", "data.workers=0", "model=ddpmpp",
            *TINY["ddpmpp"], "model.image_size=8", "model.in_channels=3", *FAST,
            "trainer.checkpoint_every=2", "trainer.num_samples=0"]
    run(compose_train([*base, "trainer.steps=4"]), tmp_path / "straight")
    run(compose_train([*base, "trainer.steps=2"]), tmp_path / "resumed")
    run(compose_train([*base, "trainer.steps=4"]), tmp_path / "resumed")
    from sde.training.checkpoint import latest_checkpoint, load_checkpoint

    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d)) for d in ("straight", "resumed"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
