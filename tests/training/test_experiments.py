"""Every experiment composes, and each of the training experiments runs a few steps on tiny shapes
into tmp_path, leaving a loadable checkpoint, a config, metrics and samples."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from sde.train import run
from sde.training.checkpoint import latest_checkpoint, load_checkpoint

from .conftest import CONF, FAST, TINY, compose_train

ALL = sorted(p.stem for p in Path(CONF, "experiment").glob("*.yaml"))
TRAINED = ["vp_toy", "ve_toy", "vp_digits", "ve_digits", "vp_cifar", "subvp_cifar", "ve_cifar",
           "vp_cifar_deep", "ve_cifar_deep", "ddpm_cifar"]


@pytest.mark.parametrize("name", ALL)
def test_experiment_composes_and_instantiates_its_sde(name):
    from hydra.utils import instantiate

    cfg = compose_train([f"experiment={name}"])
    assert cfg.experiment == name
    assert instantiate(cfg.sde).N >= 1
    assert callable(instantiate(cfg.loss))
    for section in ("sde", "model", "score", "data", "loss", "optim", "trainer", "sampler",
                    "logger", "seed"):
        assert section in cfg


def test_cifar_experiments_use_the_paper_settings():
    for name, ema, eps in [("vp_cifar", 0.9999, 1e-3), ("subvp_cifar", 0.9999, 1e-3),
                           ("ve_cifar", 0.999, 1e-5), ("ddpm_cifar", 0.9999, 1e-3)]:
        cfg = compose_train([f"experiment={name}"])
        assert (cfg.trainer.batch_size, cfg.optim.lr, cfg.optim.warmup, cfg.optim.grad_clip) == (
            128, 2e-4, 5000, 1.0)
        assert (cfg.trainer.ema_decay, cfg.sampler.eps, cfg.trainer.steps) == (ema, eps, 1_300_000)
        assert cfg.model.dropout == 0.1 and cfg.data.random_flip
        assert cfg.loss.get("eps", 1e-5) == 1e-5


def _tiny(name, data_root):
    model = compose_train([f"experiment={name}"]).model._target_.rsplit(".", 1)[-1]
    over = list(TINY["mlp" if model == "MLP" else "ddpmpp"])
    if "cifar" in name:
        over = [o.replace("attn_resolutions=[4]", "attn_resolutions=[16]") for o in over]
        over.append(f"data.root={data_root}")
    if model == "MLP":
        over.append("data.n=64")
    return [f"experiment={name}", *FAST, *over, "trainer.steps=2", "trainer.checkpoint_every=2"]


@pytest.mark.parametrize("name", TRAINED)
def test_experiment_runs_two_steps(name, tmp_path, fake_cifar):
    cfg = compose_train(_tiny(name, fake_cifar[0]))
    last = run(cfg, tmp_path / "run")
    assert last["step"] == 2 and torch.isfinite(torch.tensor(last["loss"]))
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["step"] == 2 and ckpt["config"]["experiment"] == name
    assert ckpt["config"]["data"]["shape"] == list(cfg.data.shape)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["experiment"] == name
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [1, 2]
    assert "ema_eval_loss" in metrics["train"]
    assert list((tmp_path / "run" / "samples").iterdir())
