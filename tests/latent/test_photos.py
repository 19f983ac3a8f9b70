"""Patches of scikit-learn's bundled photographs: shapes, determinism, a disjoint split."""

import numpy as np
import pytest
import torch

from sde.data.photos import photo_patches, sample_photos


def test_patch_counts_and_dtype():
    # 427 x 640 photos, 32-pixel grid: 13 x 20 = 260 patches each; 20% of 520 = 104 held out
    train, test = photo_patches(size=32), photo_patches(size=32, train=False)
    assert train.shape == (416, 3, 32, 32) and test.shape == (104, 3, 32, 32)
    assert train.dtype == torch.uint8 and len(photo_patches(size=32, train=None)) == 520


def test_patches_are_the_photo_pixels_and_deterministic():
    china = sample_photos()[0]
    assert china.shape == (427, 640, 3)
    every = photo_patches(size=16, train=None)
    np.testing.assert_array_equal(every[0].permute(1, 2, 0).numpy(), china[:16, :16])
    np.testing.assert_array_equal(every[41].permute(1, 2, 0).numpy(), china[16:32, 16:32])
    assert torch.equal(photo_patches(size=16), photo_patches(size=16))
    train, test = photo_patches(size=16), photo_patches(size=16, train=False)
    assert len(train) + len(test) == len(every)
    # together the two splits are every patch exactly once
    rows = lambda x: sorted(map(bytes, x.flatten(1).numpy()))  # noqa: E731
    assert rows(torch.cat([train, test])) == rows(every)


def test_train_and_test_share_no_patch_and_look_alike():
    train = photo_patches(size=16, scale=0.5).flatten(1)
    test = photo_patches(size=16, scale=0.5, train=False).flatten(1)
    assert not (train[:, None] == test[None]).all(-1).any()
    assert abs(train.float().std() - test.float().std()) < 0.15 * train.float().std()


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="too large"):
        photo_patches(size=500)
    with pytest.raises(ValueError, match="cannot be split"):
        photo_patches(size=400)
    with pytest.raises(ValueError, match="scale"):
        photo_patches(scale=2.0)
