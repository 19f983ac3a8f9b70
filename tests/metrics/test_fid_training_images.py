"""The training images scored against their own reference statistics, through the function
`sde.evaluate` computes FID/KID/IS with (`sde.runs.evaluate.image_quality`; issue 10 section 4):
FID is 0 to rounding, KID equals its closed form for two copies of one set, IS the formula
applied to the network's logits. Random Inception weights, written by the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sde.metrics.inception import WEIGHTS_FILE, FIDInceptionV3, load_inception
from sde.runs.evaluate import EvalOptions, image_quality

N, SIZE = 6, 16


def informative_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """He-normal convolutions and near-identity batch norm, so that pool features are O(1) (the
    default initialisation shrinks them towards 0, which would make any FID small)."""
    g = torch.Generator().manual_seed(seed)
    state = FIDInceptionV3().state_dict()
    for key, v in state.items():
        if not v.is_floating_point():
            continue
        r = torch.randn(v.shape, generator=g)
        if key.endswith("conv.weight") or key == "fc.weight":
            state[key] = r * math.sqrt(2 / math.prod(v.shape[1:]))
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = 1 + 0.1 * r.abs()
        else:
            state[key] = 0.1 * r
    return state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of N RGB PNGs (the training set of data=folder) and a random weights file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fid_self")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, SIZE)[None, None, :, None] * rng.uniform(0, 1, (N, 1, 1, 3))
    images = (smooth + rng.integers(0, 64, (N, SIZE, SIZE, 3))).clip(0, 255).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    weights = root / WEIGHTS_FILE
    torch.save(informative_state(), weights)
    data = {"name": "folder", "root": str(folder), "size": None, "channels": 3,
            "shape": [3, SIZE, SIZE], "levels": 256}
    train = torch.from_numpy(images).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, file order
    return data, weights, train


def score(samples, data, weights, metrics=("fid", "kid", "is")):
    net = load_inception(weights)
    opts = EvalOptions(inception_weights=str(weights), reference_stats=None, batch_size=4,
                       kid_subsets=3, kid_subset_size=N, is_splits=2)
    return image_quality(samples, net, data, metrics=list(metrics), opts=opts, device="cpu",
                         progress=False)


def inception_score_by_hand(logits: np.ndarray, splits: int) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) per consecutive split, averaged (Salimans et al. 2016)."""
    scores = []
    for chunk in np.array_split(logits, splits):
        p = np.exp(chunk - chunk.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = p.mean(0, keepdims=True)
        scores.append(np.exp((p * (np.log(p) - np.log(q))).sum(1).mean()))
    return float(np.mean(scores))


def test_training_images_score_zero_fid_and_closed_form_kid(setup):
    data, weights, train = setup
    samples = train.float() / 255  # (N, 3, H, W): the training images as a sampler returns them
    values = score(samples, data, weights)
    feats, logits = load_inception(weights)(samples)  # (N, 2048), (N, 1008): the network itself
    f = feats.double()
    spread = float(torch.trace(torch.cov(f.T)))  # tr(Sigma): the scale FID is measured on
    assert spread > 1e-2  # informative features: the zero below is not vacuous
    assert abs(values["fid"]) <= 1e-8 * spread
    # every subset of size N is a permutation of the set: unbiased MMD^2 of a set against itself
    # is -2 / (m - 1) (mean_i k(x_i, x_i) - mean_ij k(x_i, x_j)), k = (a.b / D + 1)^3
    k = (f @ f.T / f.shape[1] + 1) ** 3
    expected = -2 / (N - 1) * float(k.diagonal().mean() - k.mean())
    assert values["kid"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert values["kid_std"] == pytest.approx(0, abs=1e-9 * abs(expected) + 1e-15)
    # IS over 2 splits of the unbiased logits, from the same network outputs
    assert values["is"] == pytest.approx(inception_score_by_hand(logits.double().numpy(), 2),
                                         rel=1e-6)
    assert values["reference_stats"].endswith(f"fid_stats_folder_{SIZE}x{SIZE}_train.npz")


def test_other_images_score_far_from_zero(setup):
    """The positive control on the same cached statistics: inverted images are far away."""
    data, weights, train = setup
    fid_self = score(train.float() / 255, data, weights, metrics=("fid",))["fid"]
    fid_other = score(1 - train.float() / 255, data, weights, metrics=("fid",))["fid"]
    assert fid_other > 1e-3 and fid_other > 1e6 * abs(fid_self)
