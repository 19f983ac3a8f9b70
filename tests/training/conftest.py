"""Helpers for the training tests: compose the real configs, tiny overrides, fake CIFAR-10."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from sde.runs.paths import CONFIG_DIR

CONF = str(CONFIG_DIR)

# Tiny networks: one override list per model config.
TINY_UNET = ["model.nf=8", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[4]", "model.num_groups=4"]
TINY = {"mlp": ["model.hidden=16", "model.num_layers=1", "model.emb_dim=8"],
        "ddpmpp": TINY_UNET, "ncsnpp": TINY_UNET, "ddpmpp_deep": TINY_UNET,
        "ncsnpp_deep": TINY_UNET, "ddpm": TINY_UNET}
# The users' smoke run (conf/debug/fast.yaml), with periodic eval/samples/checkpoints off so
# that a test sees only what it asks for.
FAST = ["debug=fast", "trainer.eval_every=0", "trainer.sample_every=0",
        "trainer.checkpoint_every=0"]


def compose_train(overrides=()):
    """The resolved `train` config with `overrides`, as `python -m sde.train` would see it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def write_fake_cifar(folder: Path, n_per_batch: int = 6, seed: int = 0) -> np.ndarray:
    """data_batch_1..5 and test_batch in the real python-pickle format; returns the train data."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [0] * n_per_batch, b"data": data,
                 b"filenames": [b"x.png"] * n_per_batch}
        (folder / name).write_bytes(pickle.dumps(batch))
        if name != "test_batch":
            train.append(data)
    return np.concatenate(train).reshape(-1, 3, 32, 32)


@pytest.fixture
def fake_cifar(tmp_path):
    root = tmp_path / "cifar"
    data = write_fake_cifar(root / "cifar-10-batches-py")
    return root, data
