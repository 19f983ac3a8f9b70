"""The FID Inception against torch-fidelity's `FeatureExtractorInceptionV3` on identical random
weights (issue 11 section 5), and both preprocessings against closed forms.

torch-fidelity needs torchvision, which a CPU checkout does not have, so its verdict is kept in a
committed fixture (`fixtures/torch_fidelity_inception.npz`, ~70 kB): its state-dict key mapping
(names and shapes, in order), a few uint8 images, and the features and unbiased logits its
extractor gave, run in float64, on the random weights `random_state(keys, SEED)` rebuilds here.
Regenerate it (from a wheel, an unpacked wheel, or an installed torch_fidelity) with

    PYTHONPATH=$PWD python tests/metrics/test_inception_parity.py [torch_fidelity-0.4.0-py3-none-any.whl]

Where torch-fidelity's module files can be found (installed, or `SDE_TORCH_FIDELITY=wheel-or-dir`)
the live tests compare with it directly; they load its modules without its `__init__`, so
torchvision is not needed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sde.metrics.inception import INPUT_SIZE, FIDInceptionV3, resize_bilinear_tf1

FIXTURE = Path(__file__).parent / "fixtures" / "torch_fidelity_inception.npz"
SEED = 2015
IMAGE_SHAPES = [(2, 3, 32, 32), (1, 3, 24, 331)]  # CIFAR-sized upsampling; up in H, down in W


# --- the shared recipe: random weights from a key mapping ---------------------------------------
def random_state(keys_shapes, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random float32 Inception weights for the (key, shape) list, from one seeded generator in
    list order: He-normal convolutions, fc ~ N(0, 2/2048), batch norm near identity."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys_shapes:
        shape = tuple(int(s) for s in shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        r = torch.randn(shape, generator=g, dtype=torch.float64)
        if key.endswith("conv.weight") or key == "fc.weight":
            r = r * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("running_var"):
            r = 1 + 0.1 * r.abs()
        elif key.endswith("bn.weight"):
            r = 1 + 0.1 * r
        else:  # bn.bias, running_mean, fc.bias
            r = 0.1 * r
        state[key] = r.float()
    return state


def weights_checksum(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Per-tensor float64 sums: shows whether this machine's generator rebuilt the same weights."""
    return np.array([float(v.double().sum()) for v in state.values()])


def fixture_images(seed: int = SEED) -> list[torch.Tensor]:
    """uint8 test images (B, 3, H, W) of IMAGE_SHAPES."""
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in IMAGE_SHAPES]


# --- finding torch-fidelity's module files -------------------------------------------------------
def torch_fidelity_root(source: str | None = None) -> str | None:
    """The `torch_fidelity` package folder (inside a wheel, an unpacked wheel or an install)."""
    source = source or os.environ.get("SDE_TORCH_FIDELITY")
    if source:
        p = Path(source)
        return str(p / "torch_fidelity") if (p / "torch_fidelity").exists() or p.suffix == ".whl" \
            else str(p)
    spec = importlib.util.find_spec("torch_fidelity")
    return spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None


def load_torch_fidelity(root: str) -> types.ModuleType:
    """torch-fidelity's inception module, loaded without its package `__init__` (torchvision)."""
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = [root]
    sys.modules["torch_fidelity"] = pkg
    import importlib

    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")


@pytest.fixture(scope="module")
def fidelity():
    root = torch_fidelity_root()
    if root is None:
        pytest.skip("torch-fidelity not found (set SDE_TORCH_FIDELITY=path/to/the/wheel)")
    saved = {k: v for k, v in sys.modules.items() if k.startswith("torch_fidelity")}
    try:
        yield load_torch_fidelity(root)
    finally:
        for k in [k for k in sys.modules if k.startswith("torch_fidelity")]:
            del sys.modules[k]
        sys.modules.update(saved)


def fidelity_extractor(module, weights_path, dtype: str):
    return module.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(weights_path), feature_extractor_internal_dtype=dtype)


# --- against the committed fixture (runs everywhere) ---------------------------------------------
@pytest.fixture(scope="module")
def reference():
    if not FIXTURE.is_file():
        pytest.fail(f"missing {FIXTURE}; regenerate it (see this module's docstring)")
    ref = np.load(FIXTURE)
    keys_shapes = list(zip(ref["keys"].tolist(), ref["shapes"]))
    keys_shapes = [(k, tuple(int(d) for d in s[s >= 0])) for k, s in keys_shapes]
    return ref, keys_shapes


def test_key_mapping_equals_torch_fidelity(reference):
    """Every key of torch-fidelity's state dict, in order and shape, is ours: its weights file
    (the same pt_inception-2015-12-05 as pytorch-fid's) loads into FIDInceptionV3 as it is."""
    _, keys_shapes = reference
    ours = [(k, tuple(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
    assert ours == keys_shapes


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-5), (torch.float32, 1e-5)])
def test_features_equal_torch_fidelity_fixture(reference, dtype, tol):
    """preprocessing="tf1" on identical random weights: pool features and unbiased logits equal
    torch-fidelity's (computed in float64 when the fixture was made) to 1e-5."""
    ref, keys_shapes = reference
    state = random_state(keys_shapes)
    np.testing.assert_allclose(weights_checksum(state), ref["checksum"], rtol=1e-6, err_msg=(
        "torch's seeded generator rebuilt different random weights on this machine than when the "
        "fixture was made; regenerate the fixture"))
    net = FIDInceptionV3("tf1")
    net.load_state_dict(state)
    net = net.eval().to(dtype)
    images = [torch.from_numpy(ref[f"images{i}"]) for i in range(len(IMAGE_SHAPES))]
    with torch.no_grad():
        out = [net(u.to(dtype) / 255) for u in images]
    feats = torch.cat([f for f, _ in out]).double()
    logits = torch.cat([lg for _, lg in out]).double()
    scale = float(np.abs(ref["features"]).max())
    assert 0.5 < scale < 50 and np.abs(ref["features"]).mean() > 0.01  # informative weights
    torch.testing.assert_close(feats, torch.from_numpy(ref["features"]).double(), rtol=tol,
                               atol=tol)
    torch.testing.assert_close(logits, torch.from_numpy(ref["logits"]).double(), rtol=tol,
                               atol=tol)


def test_default_preprocessing_differs_from_tf1(reference):
    """The pytorch-fid preprocessing is a different protocol: its features are not torch-fidelity's
    (the parity above is not vacuous, and the two modes are not silently the same)."""
    ref, keys_shapes = reference
    net = FIDInceptionV3()
    net.load_state_dict(random_state(keys_shapes))
    with torch.no_grad():
        f, _ = net.eval()(torch.from_numpy(ref["images0"]).float() / 255)
    assert (f.double() - torch.from_numpy(ref["features"][:2])).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("preprocessing", ["tf1", "pytorch_fid"])
def test_cuda_features_equal_cpu_and_fixture(reference, preprocessing):
    """On CUDA (TF32 off) the network and both preprocessings give the CPU float64 features to
    1e-4, and tf1 torch-fidelity's to 1e-4."""
    ref, keys_shapes = reference
    net = FIDInceptionV3(preprocessing)
    net.load_state_dict(random_state(keys_shapes))
    net = net.eval()
    x = torch.from_numpy(ref["images0"]).float() / 255
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad():
            expected = net.double()(x.double())[0]
            got = net.float().cuda()(x.cuda())[0].double().cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if preprocessing == "tf1":
        torch.testing.assert_close(got, torch.from_numpy(ref["features"][:2]).double(),
                                   rtol=1e-4, atol=1e-4)


# --- preprocessing against closed forms ---------------------------------------------------------
@pytest.mark.parametrize("n_in", [32, 7, 331])
def test_tf1_resize_of_a_ramp_closed_form(n_in):
    """TF 1.x bilinear (align_corners=False) of the ramp v_j = j: out_i = min(i * s, n_in - 1)
    with s = float32(n_in / 299), no half-pixel shift; along both axes."""
    ramp = torch.arange(n_in, dtype=torch.float64)
    s = float(np.float32(n_in / INPUT_SIZE))
    i = np.arange(INPUT_SIZE)
    expected = torch.from_numpy(np.minimum(i * s, n_in - 1))
    x = ramp.view(1, 1, 1, -1).expand(1, 1, 5, -1)  # varies along W
    out = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
    torch.testing.assert_close(out[0, 0, 0], expected, rtol=0, atol=1e-9 * n_in)
    out = resize_bilinear_tf1(x.transpose(-1, -2), (INPUT_SIZE, INPUT_SIZE))  # along H
    torch.testing.assert_close(out[0, 0, :, 0], expected, rtol=0, atol=1e-9 * n_in)


def test_preprocessing_maps_8bit_values_as_each_protocol():
    """Constant images: pytorch-fid maps k/255 to 2k/255 - 1, the TF graph k to (k - 128)/128;
    the default ramp resize has half-pixel centres: out_i = clamp((i + 1/2) n/299 - 1/2)."""
    k = torch.tensor([0.0, 128.0, 255.0]).view(3, 1, 1, 1).expand(3, 3, 4, 6)
    tf1 = FIDInceptionV3("tf1").preprocess(k / 255)
    torch.testing.assert_close(tf1[:, 0, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]))
    fid = FIDInceptionV3().preprocess(k / 255)
    torch.testing.assert_close(fid[:, 0, 0, 0], torch.tensor([-1.0, 1 / 255, 1.0]))
    n = 32
    ramp = torch.arange(n, dtype=torch.float64).view(1, 1, 1, -1).expand(1, 3, 2, -1) / 255
    out = FIDInceptionV3().preprocess(ramp)[0, 0, 0]
    i = np.arange(INPUT_SIZE)
    expected = np.clip((i + 0.5) * n / INPUT_SIZE - 0.5, 0, n - 1) / 255 * 2 - 1
    torch.testing.assert_close(out, torch.from_numpy(expected), rtol=0, atol=1e-12)


def test_unknown_preprocessing_is_refused():
    with pytest.raises(ValueError, match="pytorch_fid"):
        FIDInceptionV3("tf2")


# --- live: torch-fidelity itself, where its files are available ----------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 9, 17), (1, 2, 320, 512), (1, 1, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tf1_resize_equals_torch_fidelity(fidelity, shape, dtype):
    """Bit for bit equal to interpolate_bilinear_2d_like_tensorflow1x, up- and downsampling."""
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x as reference_resize,
    )

    x = 255 * torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = reference_resize(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    assert torch.equal(resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE)), expected)
    assert not torch.allclose(expected, F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE),
                                                      mode="bilinear", align_corners=False))


def test_features_equal_torch_fidelity_live(fidelity, tmp_path):
    """float32, torch-fidelity's default: identical random weights, features and logits to 1e-5."""
    keys_shapes = [(k, tuple(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
    state = random_state(keys_shapes, seed=7)
    torch.save(state, tmp_path / "w.pth")
    theirs = fidelity_extractor(fidelity, tmp_path / "w.pth", "float32")
    ours = FIDInceptionV3("tf1")
    ours.load_state_dict(state)
    u = torch.randint(0, 256, (2, 3, 40, 28), generator=torch.Generator().manual_seed(3),
                      dtype=torch.uint8)
    with torch.no_grad():
        f_ref, lg_ref = theirs(u)
        f, lg = ours.eval()(u.float() / 255)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lg, lg_ref, rtol=1e-5, atol=1e-5)


# --- regenerating the fixture ----------------------------------------------------------------------
def make_fixture(source: str | None = None, out: Path = FIXTURE) -> None:
    """Run torch-fidelity in float64 on the random weights and images; write the npz."""
    import tempfile

    root = torch_fidelity_root(source)
    if root is None:
        raise SystemExit("torch-fidelity not found: pass its wheel or set SDE_TORCH_FIDELITY")
    module = load_torch_fidelity(root)
    with tempfile.TemporaryDirectory() as tmp:  # its constructor insists on a weights file
        ours = [(k, tuple(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
        torch.save(random_state(ours), Path(tmp) / "w.pth")
        theirs = fidelity_extractor(module, Path(tmp) / "w.pth", "float64")
    # the mapping and the weights are torch-fidelity's own, not ours
    keys_shapes = [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    state = random_state(keys_shapes)
    theirs.load_state_dict(state)
    # 0.4.0's text_to_dtype maps "float64" to float32: set the internal dtype by hand
    theirs.feature_extractor_internal_dtype = torch.float64
    theirs.double()
    images = fixture_images()
    with torch.no_grad():
        outs = [theirs(u) for u in images]
    width = max(len(s) for _, s in keys_shapes)
    shapes = np.full((len(keys_shapes), width), -1, dtype=np.int64)
    for row, (_, s) in enumerate(keys_shapes):
        shapes[row, :len(s)] = s
    arrays = {
        "keys": np.array([k for k, _ in keys_shapes]), "shapes": shapes,
        "checksum": weights_checksum(state),
        "features": torch.cat([f for f, _ in outs]).numpy().astype(np.float32),
        "logits": torch.cat([lg for _, lg in outs]).numpy().astype(np.float32),
        **{f"images{i}": u.numpy() for i, u in enumerate(images)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) from {root}")


if __name__ == "__main__":
    make_fixture(sys.argv[1] if len(sys.argv) > 1 else None)
