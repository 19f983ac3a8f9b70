"""DDP on 2 CPU processes (gloo): ranks see different shards, gradients are averaged, and the
weights stay identical on every rank; only rank 0 writes."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from sde.training.distributed import per_rank_batch

from .conftest import FAST, TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run_dir, out_dir):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import sde.training.loop as loop
    from sde.train import run

    from .conftest import compose_train

    captured = {}
    real_fit = loop.fit

    def fit(**kwargs):
        captured["model"] = kwargs["model"]
        return real_fit(**kwargs)

    loop.fit = fit  # run() imports fit from sde.training.loop when called
    cfg = compose_train(["experiment=vp_toy", *FAST, *TINY["mlp"], "data.n=64",
                         "trainer.steps=3", "trainer.batch_size=8", "trainer.device=cpu"])
    last = run(cfg, run_dir)
    torch.save({"state": captured["model"].state_dict(), "last": last}, f"{out_dir}/rank{rank}.pt")


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2,
             join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert r0["last"]["step"] == 3 and r0["last"]["loss"] == r1["last"]["loss"]  # all-reduced
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["ckpt_00000003.pt"]
    saved = torch.load(ckpts[0], weights_only=True)["model"]
    for name, value in r0["state"].items():
        assert torch.equal(value, saved[name])


def test_global_batch_must_split_evenly():
    assert per_rank_batch(128, 4) == 32
    with pytest.raises(ValueError, match="global batch"):
        per_rank_batch(10, 4)
