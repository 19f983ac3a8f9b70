"""DDP on 2 CPU processes (gloo): every method's student, and ADD's discriminator heads (not a
DDP module: their gradients are averaged by hand), stay identical on both ranks."""

import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, method_name, run_dir, out_dir):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from sde.distill import DistillSettings, distill, load_teacher, make_distiller
    from sde.training.distributed import cleanup, init_distributed

    info = init_distributed("cpu")
    teacher = load_teacher("oracle:ring:k=4")
    options = {"progressive": {"teacher_steps": 4, "student_steps": 2, "steps_per_round": 2},
               "consistency": {"steps": 2, "num_scales": 4}, "add": {"steps": 2}}[method_name]
    method, config = make_distiller(method_name, teacher, init_steps=1, info=info, model={
        "_target_": "sde.models.mlp.MLP", "dim": 2, "hidden": 16, "num_layers": 1}, **options)
    distill(method, teacher.data, run_dir=run_dir, config=config,
            settings=DistillSettings(batch_size=8, log_every=1), info=info)
    state = {k: v for k, v in method.state_dict().items() if not k.endswith("opt")}
    torch.save(state, f"{out_dir}/rank{rank}.pt")
    cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["progressive", "consistency", "add"])
def test_ddp_ranks_stay_in_sync(tmp_path, method_name):
    mp.spawn(_worker, args=(2, _free_port(), method_name, str(tmp_path / "run"), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in r0:
        for name, value in r0[key].items():
            assert torch.equal(value, r1[key][name]), (key, name)
