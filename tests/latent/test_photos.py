"""Patches of scikit-learn's bundled photographs: shapes, determinism, a leak-free split."""

import numpy as np
import pytest
import torch

from sde.data.photos import photo_patches, sample_photos


def test_patch_counts_and_dtype():
    # 427 x 640 photos, 32-pixel grid: 13 rows x 20 columns, the last round(0.2 * 20) = 4 held out
    train, test = photo_patches(size=32), photo_patches(size=32, train=False)
    assert train.shape == (2 * 13 * 16, 3, 32, 32) and test.shape == (2 * 13 * 4, 3, 32, 32)
    assert train.dtype == torch.uint8 and len(photo_patches(size=32, train=None)) == 2 * 13 * 20


def test_patches_are_the_photo_pixels_and_deterministic():
    china = sample_photos()[0]
    assert china.shape == (427, 640, 3)
    first = photo_patches(size=16)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(first, china[:16, :16])
    assert torch.equal(photo_patches(size=16), photo_patches(size=16))
    held_out = photo_patches(size=16, train=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(held_out, china[:16, 32 * 16:33 * 16])  # 40 cols, 8 held out


def test_train_and_test_share_no_patch():
    train = photo_patches(size=16, scale=0.5).flatten(1)
    test = photo_patches(size=16, scale=0.5, train=False).flatten(1)
    assert not (train[:, None] == test[None]).all(-1).any()


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="too large"):
        photo_patches(size=400)
    with pytest.raises(ValueError, match="scale"):
        photo_patches(scale=2.0)
