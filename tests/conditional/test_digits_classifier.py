"""The digits classifier that measures conditional samples (sde.metrics.digits)."""

import pytest
import torch

from sde.data import sources
from sde.metrics import digits


def test_labels_match_sklearn_order():
    # independent truth: sklearn's own loader, permuted by the documented seed-0 split
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    expected = torch.as_tensor(bunch.target)[order[sources.DIGITS_TEST:]]
    assert torch.equal(sources.digits_labels(train=True), expected)
    images = torch.as_tensor(bunch.images).reshape(-1, 1, 8, 8)[order[:sources.DIGITS_TEST]]
    assert torch.equal(sources.digits(train=False).long(), images.long())


def test_test_split_accuracy_and_determinism():
    x, y = digits.real_digits(train=False)
    assert digits.accuracy(x, y) >= 0.95
    a, b = (digits.train_digits_classifier(seed=0, epochs=1) for _ in range(2))
    assert torch.equal(a(x), b(x))  # seeded: bit-identical
    assert not torch.equal(a(x), digits.train_digits_classifier(seed=1, epochs=1)(x))
    assert digits.features(x[:4]).shape == (4, 64)


def test_feature_distance_separates_noise_from_digits():
    x_test, _ = digits.real_digits(train=False)
    x_train, _ = digits.real_digits(train=True)
    noise = torch.rand(297, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real = digits.feature_distance(x_test, x_train)
    assert real < 0.1 * digits.feature_distance(noise, x_train)
    assert digits.feature_distance(x_train, x_train) == pytest.approx(0.0, abs=1e-6)


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        digits.classify(torch.zeros(2, 3, 8, 8))
