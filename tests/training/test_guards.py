"""Training behaviours no other test pins, each against an independent formula (issue 10 §4):
the EMA follows the weights after the optimizer step, bf16 really runs the network under
autocast, and DDP's `all_mean` averages over 2 gloo processes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from sde import VPSDE
from sde.data import Dataset
from sde.losses import dsm_loss
from sde.models import get_score_fn
from sde.models.mlp import MLP
from sde.serialization import load_weights_only
from sde.training import checkpoint as ckpt_lib
from sde.training import precision
from sde.training.distributed import DistInfo, all_mean
from sde.training.loop import TrainSettings, fit


def _settings(**changes) -> TrainSettings:
    base = dict(steps=3, batch_size=8, seed=0, lr=1e-2, warmup=0, grad_clip=0.0, log_every=1,
                eval_every=0, eval_batches=1, sample_every=0, num_samples=0,
                checkpoint_every=1000, keep=1, progress=False)
    return TrainSettings(**{**base, **changes})


def _fit(model: nn.Module, run_dir, **changes) -> dict:
    """`fit` on 64 points of a 2-D mixture with DSM under a VP SDE."""
    data = Dataset("gaussian_mixture", levels=None, centered=False, n=64, seed=0)
    return fit(sde=VPSDE(), model=model, loss_fn=dsm_loss, data=data, get_score_fn=get_score_fn,
               run_dir=run_dir, config={"sde": {}, "model": {}, "score": {}},
               settings=_settings(**changes))


def _tiny_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(dim=2, hidden=16, num_layers=1, emb_dim=8)


def _saved(run_dir) -> dict:
    return load_weights_only(ckpt_lib.latest_checkpoint(run_dir))


class _RecordSteps:
    """Every optimizer step's parameters afterwards (a global post-step hook)."""

    def __init__(self, model: nn.Module):
        self.model, self.after = model, []

    def __enter__(self):
        hook = lambda opt, args, kwargs: self.after.append(  # noqa: E731
            {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        self.handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_ema_with_decay_zero_is_the_model_after_the_optimizer_step(tmp_path):
    model = _tiny_mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with _RecordSteps(model) as steps:
        _fit(model, tmp_path, ema_decay=0.0)
    saved = _saved(tmp_path)
    assert len(steps.after) == 3
    changed = [k for k in initial if not torch.equal(initial[k], steps.after[-1][k])]
    assert changed, "the optimizer did not move the weights: the test would prove nothing"
    for name, value in steps.after[-1].items():
        assert torch.equal(saved["ema"][name], value), name
        assert torch.equal(saved["model"][name], value), name


def test_ema_follows_the_warmed_up_decay_over_the_optimizer_steps(tmp_path):
    """theta_ema_k = d_k theta_ema_{k-1} + (1 - d_k) theta_k, d_k = min(d, (1 + k) / (10 + k)),
    theta_ema_0 the initial weights, theta_k the weights after the k-th optimizer step."""
    decay, model = 0.9, _tiny_mlp()
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    with _RecordSteps(model) as steps:
        _fit(model, tmp_path, ema_decay=decay)
    for k, theta in enumerate(steps.after, start=1):
        d_k = min(decay, (1 + k) / (10 + k))
        expected = {n: d_k * expected[n] + (1 - d_k) * theta[n].double() for n in expected}
    ema = _saved(tmp_path)["ema"]
    for name, value in expected.items():
        torch.testing.assert_close(ema[name].double(), value, rtol=1e-6, atol=1e-7)


class _AutocastProbe(MLP):
    """An MLP that records, for every training forward, whether CPU autocast is on and the dtype
    its first linear layer computes in."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def forward(self, x, cond, class_labels=None):
        if self.training:
            probe = nn.functional.linear(x, torch.ones(1, x.shape[1]))
            self.seen.append((torch.is_autocast_enabled("cpu"), probe.dtype))
        return super().forward(x, cond, class_labels)


@pytest.mark.parametrize("requested,kind,runs_in", [
    ("bf16", "native", torch.bfloat16), ("bf16", "amx", torch.bfloat16),
    ("auto", "amx", torch.bfloat16), ("auto", "native", torch.float32),
    ("fp32", "amx", torch.float32), ("bf16", "emulated", torch.float32),
    ("bf16_force", "emulated", torch.bfloat16)])
def test_precision_bf16_runs_the_network_under_autocast(tmp_path, monkeypatch, caplog, requested,
                                                        kind, runs_in):
    monkeypatch.setattr(precision, "cpu_bf16_kind", lambda: kind)
    torch.manual_seed(0)
    model = _AutocastProbe(dim=2, hidden=16, num_layers=1, emb_dim=8)
    with caplog.at_level(logging.WARNING, logger="sde.train"):
        last = _fit(model, tmp_path, steps=2, precision=requested)
    assert len(model.seen) == 2 and torch.isfinite(torch.tensor(last["loss"]))
    assert model.seen == [(runs_in == torch.bfloat16, runs_in)] * 2
    fell_back = requested == "bf16" and runs_in == torch.float32
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == fell_back


def _all_mean_worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        info = DistInfo(rank=rank, world=world)
        value = torch.tensor([1.0 + rank, 3.0 * rank, -2.0 ** rank])  # rank r's own numbers
        before = value.clone()
        mean = all_mean(value, info)
        scalar = all_mean(torch.tensor(float(10 * rank)), info)
        torch.save({"mean": mean, "scalar": scalar, "untouched": torch.equal(value, before)},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_mean_averages_over_two_gloo_processes(tmp_path):
    world = 2
    mp.start_processes(_all_mean_worker, args=(world, str(tmp_path / "store"), str(tmp_path)),
                       nprocs=world, join=True, start_method="fork")  # fork: no re-import
    rows = torch.tensor([[1.0 + r, 3.0 * r, -2.0 ** r] for r in range(world)])
    expected = rows.sum(0) / world  # [1.5, 1.5, -1.5]
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["mean"], expected)
        torch.testing.assert_close(got["scalar"], torch.tensor(5.0))
        assert got["untouched"]  # the caller's tensor is not reduced in place
    one = torch.tensor([4.0, -1.0])
    assert all_mean(one, DistInfo()) is one  # one process: a no-op
