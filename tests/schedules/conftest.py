"""Shared pieces of the schedules tests: composing the training config as `sde.train` does."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from sde.runs.paths import CONFIG_DIR

CONF = str(CONFIG_DIR)
TINY_MLP = ["model.hidden=16", "model.num_layers=1", "model.emb_dim=8", "data.n=64"]
FAST = ["logger=none", "trainer.progress=false", "trainer.batch_size=4", "trainer.log_every=1",
        "trainer.eval_batches=1", "trainer.num_samples=4", "trainer.sample_every=0",
        "trainer.eval_every=0", "optim.warmup=2"]


def compose_train(overrides=()):
    """The resolved `train` config with `overrides`, as `python -m sde.train` would see it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))
