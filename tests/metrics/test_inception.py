"""The FID Inception: standard key names and shapes, loading, the missing-weights message."""

import pytest
import torch

from sde.metrics.inception import WEIGHTS_FILE, FIDInceptionV3, load_inception

# A few entries of pt_inception-2015-12-05-6726825d.pth (pytorch-fid / torch-fidelity names).
STANDARD_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A random state dict of the standard layout, saved like the real file (no BN counters):
    the module's random initialisation with random batch-norm statistics."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in state:
        if k.endswith("running_mean"):
            state[k] = 0.01 * torch.randn_like(state[k])
        if k.endswith("running_var"):
            state[k] = 0.01 * torch.rand_like(state[k]) + 0.01
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_FILE
    torch.save(state, path)
    return path, state


def test_standard_names_and_shapes():
    state = FIDInceptionV3().state_dict()
    for key, shape in STANDARD_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(p.numel() for p in FIDInceptionV3().parameters())
    # torchvision's inception_v3 without aux head (23,834,568) with 1008 instead of 1000 classes
    assert params == 23_834_568 + 8 * 2049


def test_loads_state_dict_and_runs(random_weights):
    path, state = random_weights
    net = load_inception(path)
    assert not net.training
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats, logits = net(x)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # mean of ReLU outputs
    assert feats.abs().sum() > 0
    torch.testing.assert_close(logits, feats @ state["fc.weight"].T)


def test_wrong_state_dict_is_rejected(tmp_path, random_weights):
    _, state = random_weights
    bad = dict(state)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="fc.weight"):
        load_inception(tmp_path / "bad.pth")


@pytest.mark.parametrize("path", [None, "/nonexistent/pt_inception.pth"])
def test_missing_weights_message(path):
    with pytest.raises(FileNotFoundError) as err:
        load_inception(path)
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and "eval.inception_weights=" in msg and "https://" in msg
