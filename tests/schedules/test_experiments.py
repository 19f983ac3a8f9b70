"""The schedule options through Hydra: sde=cosine, sde.zero_terminal_snr, score.prediction=v|edm,
loss=edm, and the experiments edm_toy and edm_cifar (a few training steps each; the slow tests
train the toy experiments to convergence in tests/schedules/test_toy_fit.py)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from sde import VESDE, VPSDE, CosineVPSDE
from sde.train import run

from .conftest import FAST, TINY_MLP, compose_train


def test_sde_options_compose():
    assert isinstance(instantiate(compose_train(["sde=cosine"]).sde), CosineVPSDE)
    sde = instantiate(compose_train(["sde=vp", "sde.zero_terminal_snr=true"]).sde)
    assert isinstance(sde, VPSDE) and sde.zero_terminal_snr and sde.alphas_cumprod[-1] == 0


def test_edm_cifar_uses_edm_settings():
    cfg = compose_train(["experiment=edm_cifar"])
    assert (cfg.optim.lr, cfg.trainer.batch_size, cfg.model.dropout) == (1e-3, 512, 0.13)
    assert cfg.trainer.steps * cfg.trainer.batch_size == pytest.approx(200e6, rel=1e-3)
    # EMA half-life 0.5 Mimg at batch 512: decay^(500000 / 512) = 1/2
    assert cfg.trainer.ema_decay ** (500_000 / 512) == pytest.approx(0.5, abs=2e-3)
    assert (cfg.sampler.name, cfg.sampler.grid, cfg.score.prediction) == ("heun", "edm", "edm")
    assert (cfg.loss.P_mean, cfg.loss.P_std, cfg.loss.sigma_data) == (-1.2, 1.2, 0.5)
    sde = instantiate(cfg.sde)
    assert isinstance(sde, VESDE) and (sde.sigma_min, sde.sigma_max) == (0.002, 80.0)


@pytest.mark.parametrize("overrides", [
    ["experiment=edm_toy"],
    ["experiment=vp_toy", "sde=cosine", "score.prediction=v"],
    ["experiment=vp_toy", "sde.zero_terminal_snr=true", "score.prediction=v", "loss=ddpm",
     "score.time_input=step", "sampler.predictor=ancestral_sampling"],
    ["experiment=ve_toy", "score.prediction=edm", "loss=edm"],
], ids=["edm_toy", "cosine_v", "zsnr_v_ddpm", "ve_edm"])
def test_schedule_options_train_two_steps(overrides, tmp_path):
    cfg = compose_train([*overrides, *FAST, *TINY_MLP, "trainer.steps=2",
                         "trainer.checkpoint_every=2", "trainer.sample_every=2",
                         "sampler.steps=25"])
    last = run(cfg, tmp_path / "run")
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert list((tmp_path / "run" / "samples").iterdir())
