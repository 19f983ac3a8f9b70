"""The high-resolution experiments (conf/experiment/ve_{bedroom,church,ffhq_256,celebahq_256,
ffhq_1024}.yaml) train: two steps on a tiny folder of pictures, at tiny shapes, into tmp_path."""

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from sde.convert.export import CONFIG_DIR
from sde.train import run
from sde.training.checkpoint import latest_checkpoint, load_checkpoint

TINY = ["model.image_size=16", "model.nf=8", "model.ch_mult=[1,2,2]", "model.num_res_blocks=1",
        "model.attn_resolutions=[8]", "model.num_groups=4", "data.size=16",
        "data.shape=[3,16,16]", "logger=none", "trainer.progress=false", "trainer.batch_size=4",
        "trainer.eval_batches=1", "trainer.num_samples=2", "sampler.steps=5",
        "trainer.sample_every=0", "trainer.eval_every=0", "optim.warmup=2", "trainer.steps=2",
        "trainer.checkpoint_every=2", "trainer.device=cpu"]


@pytest.mark.parametrize("name", ["ve_church", "ve_ffhq_1024"])
def test_high_resolution_experiment_trains(name, tmp_path):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # centre-cropped, resized
        Image.fromarray(image).save(pictures / f"{i}.png")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [f"experiment={name}", f"data.root={pictures}", *TINY])
    last = run(cfg, tmp_path / "run")
    assert last["step"] == 2 and np.isfinite(last["loss"])
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["config"]["experiment"] == name and ckpt["config"]["data"]["shape"] == [3, 16, 16]
    assert ckpt["config"]["model"]["progressive"] == "output_skip"
