"""Bad data gives one clear error naming the file (or key, or row) and the fix."""

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from sde.data import DataError, Dataset, check_model_input, load_source, sources

from .conftest import write_cifar, write_png_folder


class _RunsCode:
    """Unpickling this calls os.system: what a doctored CIFAR batch could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_that_runs_code_is_refused_and_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _RunsCode(marker)}))
    with pytest.raises(DataError, match=r"data_batch_3.*global (posix|os)\.system.*refused"):
        sources.cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    images = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    np.testing.assert_array_equal(sources.cifar10(tmp_path).numpy(), images)


def test_cifar_numpy1_pickle_spelling_loads(tmp_path):
    """The real batches were pickled by numpy 1 (`numpy.core.multiarray._reconstruct`)."""
    images = write_cifar(tmp_path / "cifar-10-batches-py")
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        path = tmp_path / "cifar-10-batches-py" / name
        raw = path.read_bytes()
        assert b"cnumpy._core.multiarray\n_reconstruct" in raw  # protocol 2: GLOBAL, text
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(sources.cifar10(tmp_path).numpy(), images)


def test_cifar_batch_with_other_contents_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 5))}))
    with pytest.raises(DataError, match=r"data_batch_2 is not a CIFAR-10 batch.*float64"):
        sources.cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DataError, match=r"data_batch_2 is corrupt or truncated"):
        sources.cifar10(tmp_path)


def test_corrupt_cifar_tarball_is_named(tmp_path):
    write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is corrupt or truncated"):
        load_source("cifar10", root=tmp_path)
    archive.write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is corrupt"):
        load_source("cifar10", root=tmp_path)


def test_nan_and_inf_rows_are_found_at_load_with_the_row(tmp_path):
    a = np.random.default_rng(0).normal(size=(30, 4))
    a[17, 2], a[23, 0] = np.nan, np.inf
    np.save(tmp_path / "d.npy", a)
    with pytest.raises(DataError, match=r"d.npy\): row 17 holds NaN or Inf \(2 of 30 rows"):
        Dataset("npz", None, path=str(tmp_path / "d.npy"), centered=False)
    a[17, 2] = 0.0
    np.save(tmp_path / "d.npy", a)
    with pytest.raises(DataError, match=r"row 23 "):
        Dataset("npz", None, path=str(tmp_path / "d.npy"), centered=False)
    np.save(tmp_path / "big.npy", np.full((3, 2), 1e39))  # finite in float64, inf in float32
    with pytest.raises(DataError, match=r"row 0 "):
        Dataset("npz", None, path=str(tmp_path / "big.npy"), centered=False)


def test_complex_and_non_numeric_arrays_are_refused_with_the_key(tmp_path):
    np.savez(tmp_path / "c.npz", z=np.ones((4, 2), np.complex64))
    with pytest.raises(DataError, match=r"c.npz \(key 'z'\) is complex \(complex64\)"):
        load_source("npz", path=tmp_path / "c.npz")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]] * 3))
    with pytest.raises(DataError, match=r"s.npy has dtype <U1, not a number"):
        load_source("npz", path=tmp_path / "s.npy")


def test_truncated_or_foreign_npz_is_named(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((100, 3)))
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"d.npz is not a readable .npz/.npy.*truncated"):
        load_source("npz", path=tmp_path / "d.npz")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # a zip whose member is not an array
        z.writestr("x.npy", b"\x93NUMPY garbage")
    (tmp_path / "z.npz").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=r"z.npz is not a readable"):
        load_source("npz", path=tmp_path / "z.npz")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}] * 3), allow_pickle=True)
    with pytest.raises(DataError, match=r"o.npy is not a readable.*allow_pickle"):
        load_source("npz", path=tmp_path / "o.npy")


def test_corrupt_image_in_memory_is_dropped_and_unknown_channels_refused(tmp_path, caplog):
    root = tmp_path / "im"
    write_png_folder(root, 4)
    (root / "zz.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with caplog.at_level("WARNING", logger="sde.data"):
        assert sources.image_folder(root).shape == (4, 3, 6, 6)
    assert "zz.jpg is not a readable image" in caplog.text
    with pytest.raises(DataError, match=r"data.channels must be 1 \(grey\) or 3"):
        sources.image_folder(root, channels=4)
    with pytest.raises(DataError, match=r"data.channels must be 1"):
        Dataset("folder", None, levels=256, root=str(root), channels=2)


def test_fingerprint_tells_other_data(tmp_path):
    root = tmp_path / "im"
    write_png_folder(root, 4)
    folder = lambda: Dataset("folder", None, levels=256, root=str(root))  # noqa: E731
    first = folder().fingerprint
    assert isinstance(first, str) and first == folder().fingerprint
    (root / "im000.png").rename(root / "im000b.png")
    assert folder().fingerprint != first
    np.save(tmp_path / "d.npy", np.ones((5, 2)))
    npz = lambda: Dataset("npz", None, path=str(tmp_path / "d.npy"), centered=False)  # noqa
    before = npz().fingerprint
    np.save(tmp_path / "d.npy", np.array([[1.0, 1.0]] * 4 + [[1.0, 1.5]]))  # same shape
    assert npz().fingerprint != before
    assert Dataset("two_moons", [2], n=50).fingerprint != Dataset("two_moons", [2], n=50,
                                                                  seed=1).fingerprint
    assert Dataset("digits", [1, 8, 8], levels=17).fingerprint == \
        Dataset("digits", [1, 8, 8], levels=17).fingerprint


def test_channel_mismatch_with_the_network_is_one_clear_error():
    from sde.models.ddpm import DDPM

    model = DDPM(image_size=8, in_channels=3, nf=8, ch_mult=[1, 2], num_res_blocks=1,
                 attn_resolutions=[4], num_groups=4)
    check_model_input(model, (3, 8, 8))
    with pytest.raises(DataError, match=r"takes examples shaped \[3, 8, 8\], but the data is "
                       r"shaped \[1, 8, 8\] \(data.shape\).*model.in_channels"):
        check_model_input(model, (1, 8, 8))
    with pytest.raises(DataError, match=r"shaped \[3, 16, 16\] \(data.shape\)"):
        check_model_input(model, (3, 16, 16))


def test_channel_mismatch_of_an_undeclared_network_found_by_one_forward():
    class Net(torch.nn.Module):  # declares no input shape
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x, t):
            return self.conv(x)

    net = Net()
    check_model_input(net, (3, 4, 4))
    assert net.training  # the mode is restored
    with pytest.raises(DataError, match=r"does not take data shaped \[1, 4, 4\].*channels"):
        check_model_input(net, (1, 4, 4))
    assert net.training and torch.is_grad_enabled()
