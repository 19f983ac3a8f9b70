"""FID / KID / IS against closed forms, and the cached reference statistics."""

import numpy as np
import pytest
import torch

from sde.metrics.fid import (
    feature_statistics,
    fid_from_features,
    fid_to_reference,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    polynomial_mmd2,
    reference_statistics,
)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_full_covariance_closed_form():
    """Rotated covariances S1 = Q D1 Q^T, S2 = Q D2 Q^T commute: the diagonal formula holds."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    d1, d2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    got = frechet_distance(mu1, q @ np.diag(d1) @ q.T, mu2, q @ np.diag(d2) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert got == pytest.approx(expected, rel=1e-8)
    # identical Gaussians: zero; singular covariances still finite
    s = q @ np.diag(d1) @ q.T
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0, abs=1e-8)
    assert np.isfinite(frechet_distance(mu1, np.zeros((6, 6)), mu2, np.zeros((6, 6))))


def test_fid_from_samples_of_two_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2 + 1
    # closed form: 3 * 1^2 + 3 * (1 + 4 - 2 * 2) = 6
    assert fid_from_features(x, y) == pytest.approx(6.0, abs=0.15)
    mu, sigma = feature_statistics(x)
    assert mu.shape == (3,) and sigma.shape == (3, 3)


def test_kid_constant_features_closed_form():
    a, b = np.full((4, 3), 0.5), np.full((4, 3), -1.0)
    k = lambda u, v: (u @ v / 3 + 1) ** 3
    expected = k(a[0], a[0]) + k(b[0], b[0]) - 2 * k(a[0], b[0])
    assert polynomial_mmd2(a, b) == pytest.approx(expected)
    mean, std = kernel_inception_distance(a, b, subsets=3, subset_size=4)
    assert mean == pytest.approx(expected) and std == pytest.approx(0, abs=1e-12)


def test_kid_same_distribution_near_zero_and_shift_positive():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(x, y + 1, subsets=20, subset_size=200)
    assert abs(same) < 0.02 and shifted > 0.2


def test_inception_score_bounds():
    c = 10
    confident = 100.0 * torch.eye(c).repeat(5, 1)  # every class equally often, each certain
    mean, std = inception_score(confident, splits=5)
    assert mean == pytest.approx(c, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    mean, _ = inception_score(torch.zeros(50, c), splits=5)  # uniform predictions: IS = 1
    assert mean == pytest.approx(1.0)
    one_class = 100.0 * torch.eye(c)[[0] * 50]  # always the same class: IS = 1
    assert inception_score(one_class, splits=5)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(3, c), splits=5)


class FakeNet:
    """Stands in for the Inception: features = flattened pixels; counts calls."""

    calls = 0

    def __call__(self, x):
        FakeNet.calls += 1
        f = x.flatten(1)
        return f, f[:, :2]


def test_reference_statistics_cached_and_invalidated(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 2, 2, generator=g)
    batches = lambda: torch.split(images, 5)
    cache = tmp_path / "ref" / "stats.npz"
    net = FakeNet()
    first = reference_statistics(batches, cache, net=net, key="fake")
    assert cache.is_file() and FakeNet.calls == 3
    second = reference_statistics(batches, cache, net=net, key="fake")
    assert FakeNet.calls == 3  # from the cache
    np.testing.assert_allclose(first["sigma"], second["sigma"])
    q = (images.expand(-1, 3, -1, -1) * 255).round() / 255
    np.testing.assert_allclose(first["mu"], q.flatten(1).double().mean(0).numpy(), atol=1e-12)
    images[0] = 1 - images[0]  # the data changed: recomputed
    reference_statistics(batches, cache, net=net, key="fake")
    assert FakeNet.calls == 6
    net.preprocessing = "tf1"  # another Inception preprocessing: its own statistics
    reference_statistics(batches, cache, net=net, key="fake")
    assert FakeNet.calls == 9
    net.preprocessing = "pytorch_fid"  # the default keys as before the option existed
    reference_statistics(batches, cache, net=net, key="fake")
    assert FakeNet.calls == 12
    reference_statistics(batches, cache, net=FakeNet(), key="fake")
    assert FakeNet.calls == 12


def test_frechet_matches_torchmetrics_eigenvalue_form():
    """Non-commuting covariances: sqrtm route == torchmetrics' sum of sqrt(eig(S1 S2))."""
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 80)), rng.normal(size=(50, 80))
    s1, s2 = a @ a.T / 80, b @ b.T / 80 + 0.1 * np.eye(50)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    reference = fid_mod._compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(float(reference), rel=1e-8)


def test_frechet_matches_scipy_sqrtm_and_handles_singular_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 10)), rng.normal(size=(30, 40))
    s1, s2 = a @ a.T / 10, b @ b.T / 40  # s1 has rank 10 of 30
    mu = rng.normal(size=30)
    sqrt_term = np.trace(scipy_linalg.sqrtm(s1 @ s2)).real
    expected = mu @ mu + np.trace(s1) + np.trace(s2) - 2 * sqrt_term
    assert frechet_distance(mu, s1, np.zeros(30), s2) == pytest.approx(expected, rel=1e-6)


def test_fid_to_reference_few_samples_closed_form():
    """N < D samples (the fast (N, N) route): rows +-c_j e_j have mean 0 and the diagonal
    covariance 2 c_j^2 / (N - 1) on the first k axes, so against N(mu2, diag(d)) the FID is
    |mu2|^2 + sum_j s_j + sum d - 2 sum_j sqrt(s_j d_j)."""
    rng = np.random.default_rng(4)
    k, dim = 3, 10
    c, d, mu2 = rng.uniform(0.5, 2, k), rng.uniform(0.1, 3, dim), rng.normal(size=dim)
    rows = [sign * c[j] * np.eye(dim)[j] for j in range(k) for sign in (1, -1)]
    features = np.stack(rows)  # (6, 10)
    s = 2 * c**2 / (len(features) - 1)
    expected = mu2 @ mu2 + s.sum() + d.sum() - 2 * np.sqrt(s * d[:k]).sum()
    assert fid_to_reference(features, mu2, np.diag(d)) == pytest.approx(expected, rel=1e-12)


def test_fid_to_reference_routes_agree_and_identical_sets_give_zero():
    """Few samples (N <= D) and many (N > D) agree with the covariance formula; a set against its
    own statistics is 0 up to rounding also when the covariance is singular (rank N - 1 < D)."""
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(200, 40)) @ rng.normal(size=(40, 40)) / 6
    mu2, s2 = feature_statistics(ref)
    for n in (5, 39, 41, 120):
        f = rng.normal(size=(n, 40)) * rng.uniform(0.1, 3, 40)
        assert fid_to_reference(f, mu2, s2) == pytest.approx(
            frechet_distance(*feature_statistics(f), mu2, s2), rel=1e-9)
    few = rng.normal(size=(6, 40)) * 10
    spread = np.trace(feature_statistics(few)[1])
    assert abs(fid_to_reference(few, *feature_statistics(few))) <= 1e-10 * spread
    assert abs(frechet_distance(*feature_statistics(few), *feature_statistics(few))) <= 1e-10 * spread
