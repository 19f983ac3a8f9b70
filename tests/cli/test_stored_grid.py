"""`sampler.grid=optimized` on a run: the Align Your Steps grid is computed once per (steps, eps,
checkpoint) from the run's own score and training data, stored in `<run>/grids/`, and reused."""

import json
import shutil

import pytest
import torch

import sde.sampling
from sde.runs.sampling import sample_run

OPTIONS = {"steps": 4, "grid": "optimized", "eps": 1e-3}


@pytest.fixture
def run_dir(toy_run, tmp_path):
    return shutil.copytree(toy_run, tmp_path / "run")


def test_optimized_grid_is_computed_once_and_stored(run_dir, tmp_path, monkeypatch):
    first = sample_run(str(run_dir), sampler="unipc", sampler_options=OPTIONS, n=4, seed=0,
                       batch_size=4, out=tmp_path / "a.npz", progress=False)
    files = list((run_dir / "grids").glob("optimized_steps4_eps0.001_step*.json"))
    assert len(files) == 1
    times = torch.tensor(json.loads(files[0].read_text())["times"], dtype=torch.float64)
    assert times.shape == (4,) and bool((times.diff() < 0).all())
    assert times[0].item() == pytest.approx(1.0) and times[-1].item() == pytest.approx(1e-3)

    def refuse(*args, **kwargs):
        raise AssertionError("the stored grid should have been reused")

    monkeypatch.setattr(sde.sampling, "optimize_grid", refuse)
    second = sample_run(str(run_dir), sampler="unipc", sampler_options=OPTIONS, n=4, seed=0,
                        batch_size=4, out=tmp_path / "b.npz", progress=False)
    import numpy as np

    a, b = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "ab")
    np.testing.assert_array_equal(a, b)
    assert first["nfe"] == second["nfe"] == 4


def test_optimized_grid_needs_steps(run_dir, tmp_path):
    with pytest.raises(ValueError, match="grid=optimized needs sampler.steps"):
        sample_run(str(run_dir), sampler="unipc", sampler_options={"grid": "optimized"}, n=2,
                   seed=0, batch_size=2, out=tmp_path / "a.npz", progress=False)


def test_without_denoise_to_zero_the_stored_grid_has_one_more_time(run_dir, tmp_path):
    """denoise_to_zero=False lands on eps after `steps` steps: steps + 1 grid times, stored under
    their own count (the grid a Tweedie sampler with steps + 1 would use)."""
    record = sample_run(str(run_dir), sampler="unipc",
                        sampler_options={**OPTIONS, "denoise_to_zero": False}, n=2, seed=0,
                        batch_size=2, out=tmp_path / "a.npz", progress=False)
    files = list((run_dir / "grids").glob("optimized_steps5_eps0.001_step*.json"))
    assert len(files) == 1 and len(json.loads(files[0].read_text())["times"]) == 5
    assert record["nfe"] == 4
