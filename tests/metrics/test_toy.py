"""Toy-data evaluation helpers and the figures."""

import math

import pytest
import torch

from sde.metrics.toy import (
    RecordingScore,
    affine_log_det,
    density_grid,
    sample_distances,
    save_density,
    save_trajectories,
)


def test_sample_distances_detect_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
    same, shifted = sample_distances(x, y), sample_distances(x, y + 1.5)
    assert abs(same["energy_distance"]) < 0.05 and shifted["energy_distance"] > 0.5
    assert abs(same["mmd_rbf"]) < 0.02 and shifted["mmd_rbf"] > 0.1


def test_density_grid_integrates_to_one():
    log_prob = lambda x: -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
    logp, extent = density_grid(log_prob, lim=5.0, resolution=101, batch_size=1000)
    cell = ((extent[1] - extent[0]) / 100) ** 2
    assert logp.shape == (101, 101)
    assert float(logp.exp().sum() * cell) == pytest.approx(1.0, abs=1e-3)
    assert logp[50, 50] == pytest.approx(-math.log(2 * math.pi))  # the centre


def test_affine_log_det():
    assert affine_log_det(lambda x: 2 * x - 1, 3) == pytest.approx(3 * math.log(2))
    assert affine_log_det(lambda x: x, 2) == pytest.approx(0.0)


def test_recording_score_and_figures(tmp_path):
    rec = RecordingScore(lambda x, t: -x, keep=3)
    x = torch.randn(5, 2)
    for t in (1.0, 0.5):
        x = x + 0.1 * rec(x, torch.full((5,), t))
    paths = rec.trajectories(final=x)
    assert paths.shape == (3, 3, 2) and rec.times == [1.0, 0.5]
    torch.testing.assert_close(paths[:, -1], x[:3])
    logp, extent = density_grid(lambda p: -(p**2).sum(1), lim=2.0, resolution=8)
    for f in (save_trajectories(paths, tmp_path / "t.png"),
              save_density(logp, extent, tmp_path / "d.png")):
        assert f.is_file() and f.stat().st_size > 100


def test_density_grid_orientation():
    """Row i is y_i, column j is x_j (imshow with origin='lower')."""
    log_prob = lambda p: -((p[:, 0] - 1.0) ** 2 + (p[:, 1] + 2.0) ** 2)
    logp, (x0, x1, y0, y1) = density_grid(log_prob, lim=(-3.0, 3.0, -4.0, 2.0), resolution=13)
    i, j = divmod(int(logp.argmax()), 13)
    assert x0 + j * (x1 - x0) / 12 == pytest.approx(1.0)
    assert y0 + i * (y1 - y0) / 12 == pytest.approx(-2.0)
