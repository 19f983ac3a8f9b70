"""Sampling at scale: `torchrun --nproc_per_node=2 -m sde.sample` (gloo on CPU) shards the seeds
over the ranks and writes exactly the samples of one process; `format=png` too."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from sde.runs.distributed import DistInfo, shard

ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
OPTS = ["sampler.steps=25", "sampler.corrector=none", "progress=false", "device=cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample(run, *args, procs: int = 1):
    launch = [sys.executable, "-m", "sde.sample"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
        f"--master_port={_free_port()}", "-m", "sde.sample"]
    proc = subprocess.run([*launch, f"run={run}", *OPTS, *args], capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_shards_cover_every_seed_once():
    for n in (1, 5, 64):
        for world in (1, 2, 3):
            blocks = [list(shard(n, DistInfo(rank=r, world=world))) for r in range(world)]
            assert sum(blocks, []) == list(range(n))


def _worker(rank, world, port, run, out, fmt):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    from sde.runs.distributed import cleanup, init_distributed
    from sde.runs.sampling import sample_run

    torch.set_num_threads(1)
    info = init_distributed("cpu", key="device")
    try:
        where = {"out_dir": out} if fmt == "png" else {"out": out}
        sample_run(run, sampler_options=SAMPLER, n=5, seed=3, batch_size=2, format=fmt,
                   info=info, device="cpu", progress=False, **where)
    finally:
        cleanup()


SAMPLER = {"steps": 25, "corrector": "none"}


@pytest.mark.parametrize("fmt", ["npz", pytest.param("png", marks=pytest.mark.slow)])
def test_two_gloo_processes_give_the_samples_of_one(digits_run, tmp_path, fmt):
    """The library under 2 processes (as torchrun starts them) against one process."""
    import torch.multiprocessing as mp
    from PIL import Image

    from sde.runs.sampling import sample_run

    one = sample_run(digits_run, sampler_options=SAMPLER, n=5, seed=3, batch_size=5,
                     out=tmp_path / "one.npz", device="cpu", progress=False)
    out = tmp_path / ("two" if fmt == "png" else "two.npz")
    mp.spawn(_worker, args=(2, _free_port(), str(digits_run), str(out), fmt), nprocs=2, join=True)
    a = np.load(one["npz"])
    if fmt == "npz":
        b = np.load(out)
        np.testing.assert_array_equal(a["seeds"], b["seeds"])
        np.testing.assert_allclose(a["samples"], b["samples"], rtol=0, atol=1e-6)
        return
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.png" for s in a["seeds"]]
    for k, s in enumerate(a["seeds"]):
        png = np.asarray(Image.open(out / f"{s}.png"), dtype=np.float64) / 255
        np.testing.assert_allclose(png, a["samples"][k, 0], atol=0.5 / 255 + 1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_write_the_samples_of_one(digits_run, tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    _sample(digits_run, "n=5", "seed=3", "batch_size=2", f"out={one}")
    proc = _sample(digits_run, "n=5", "seed=3", "batch_size=2", f"out={two}", procs=2)
    a, b = np.load(one), np.load(two)
    assert b["seeds"].tolist() == list(range(3_000_000, 3_000_005))
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_allclose(a["samples"], b["samples"], rtol=0, atol=1e-6)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1 and records[0]["processes"] == 2  # rank 0 reports


@pytest.mark.slow
def test_two_processes_write_one_png_per_seed(digits_run, tmp_path):
    _sample(digits_run, "n=5", "seed=0", "format=png", f"out_dir={tmp_path / 'png'}", procs=2)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        f"{i:06d}.png" for i in range(5)]


def _eval_worker(rank, world, port, run, out, kwargs):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    from sde.runs.distributed import cleanup, init_distributed
    from sde.runs.evaluate import evaluate_run

    torch.set_num_threads(1)
    info = init_distributed("cpu", key="device")
    try:
        values = evaluate_run(run, **kwargs, info=info, device="cpu", progress=False)
        if info.is_main:
            torch.save(values, out)
    finally:
        cleanup()


def _evaluate_two_ways(run, tmp_path, **kwargs):
    """evaluate_run's values in one process, and under 2 gloo processes."""
    import torch
    import torch.multiprocessing as mp

    from sde.runs.evaluate import evaluate_run

    one = evaluate_run(run, **kwargs, device="cpu", progress=False)
    mp.spawn(_eval_worker, args=(2, _free_port(), str(run), str(tmp_path / "v.pt"), kwargs),
             nprocs=2, join=True)
    return one, torch.load(tmp_path / "v.pt", weights_only=True)


@pytest.mark.slow
def test_sample_metrics_are_the_same_over_two_processes(toy_run, tmp_path):
    one, two = _evaluate_two_ways(toy_run, tmp_path, metrics=["toy"], sampler_options=SAMPLER,
                                  n=6, batch_size=4, trajectories=2, resolution=4, rtol=1e-3,
                                  atol=1e-3, likelihood_eps=1e-3)
    assert two["sample_n"] == 6
    for key in ("energy_distance", "mmd_rbf"):
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_fid_kid_is_are_the_same_over_two_processes(digits_run, tmp_path):
    """Each rank scores its own samples with the Inception; rank 0 gathers the features."""
    from .test_sample_evaluate import _image_folder, _random_inception

    _image_folder(tmp_path / "images")
    weights = _random_inception(tmp_path / "inception.pth")
    data = {"name": "folder", "root": str(tmp_path / "images"), "size": 8, "channels": 1,
            "shape": [1, 8, 8], "levels": 256}
    one, two = _evaluate_two_ways(digits_run, tmp_path, metrics=["fid", "kid", "is"],
                                  sampler_options=SAMPLER, n=5, batch_size=2, data=data,
                                  inception_weights=weights, kid_subsets=3, kid_subset_size=4,
                                  is_splits=1, seed=1)
    assert two["sample_n"] == 5 and one["fid"] > 1e-3
    for key in ("fid", "kid", "is"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-9), key
