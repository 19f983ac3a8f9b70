"""Tiny trained runs for the sampling / evaluation / run-directory tests."""

from pathlib import Path

import pytest

from sde.runs.paths import CONFIG_DIR

CONF = str(CONFIG_DIR)


def train_tiny(run_dir: Path, overrides: list[str]) -> Path:
    """Train a few steps with the training entry's `run` into run_dir."""
    from hydra import compose, initialize_config_dir

    from sde.train import run

    common = ["logger=none", "trainer.steps=2", "trainer.checkpoint_every=2",
              "trainer.sample_every=0", "trainer.eval_every=0", "trainer.num_samples=4",
              "trainer.progress=false", "trainer.device=cpu", "sampler.steps=5",
              "sampler.predictor=euler_maruyama", "sampler.corrector=none"]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("train", overrides=common + overrides)
    run(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "vp_toy" / "t0", [
        "experiment=vp_toy", "model.hidden=32", "model.num_layers=1", "model.emb_dim=16",
        "trainer.batch_size=32", "data.n=2000"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "vp_digits" / "t0", [
        "data=digits", "model=ddpm", "model.image_size=8", "model.in_channels=1", "model.nf=8",
        "model.ch_mult=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]",
        "model.num_groups=4", "trainer.batch_size=8", "experiment=vp_toy", "~model.hidden",
        "~model.embedding_type", "~model.fourier_scale", "loss=dsm", "score.prediction=eps",
        "score.time_input=t"])
