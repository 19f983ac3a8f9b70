"""TrainSettings: its defaults are the config files' (written once), and bad values in the
trainer / optim sections are refused with the key named, from Python and from the command line."""

import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from sde.runs.paths import CONFIG_DIR
from sde.training.loop import TrainSettings

from .conftest import compose_train


def test_defaults_are_the_config_files():
    trainer = yaml.safe_load((CONFIG_DIR / "trainer" / "default.yaml").read_text())
    optim = yaml.safe_load((CONFIG_DIR / "optim" / "adam.yaml").read_text())
    s = TrainSettings()
    for key, value in trainer.items():
        if key != "device":
            assert getattr(s, key) == value, key
    assert (s.lr, s.betas, s.adam_eps, s.weight_decay, s.optimizer, s.warmup, s.grad_clip) == (
        optim["lr"], tuple(optim["betas"]), optim["eps"], optim["weight_decay"], optim["name"],
        optim["warmup"], optim["grad_clip"])
    # the values that drifted before (log_every 50 vs 100, eval_every, sample_every)
    assert (s.log_every, s.eval_every, s.sample_every) == (100, 5000, 50000)


@pytest.mark.parametrize("owner, name, section", [
    ("sde.runs.evaluate:EvalOptions", "evaluate.yaml", "eval"),
    ("sde.distill.loop:DistillSettings", "distill/distill.yaml", "trainer"),
])
def test_other_settings_defaults_are_their_config_sections(owner, name, section):
    """EvalOptions and DistillSettings are config sections too: every key of the section is a
    field whose default is the file's value (none written a second time in Python)."""
    import importlib

    module, cls = owner.split(":")
    fields = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    config = yaml.safe_load((CONFIG_DIR / name).read_text())
    values = {**config[section], **({"seed": config["seed"]} if "seed" in fields else {})}
    assert set(values) == set(fields)
    for key, value in values.items():
        if isinstance(value, str) and value.startswith("${oc.env:SDE_INCEPTION_WEIGHTS"):
            value = os.environ.get("SDE_INCEPTION_WEIGHTS")
        assert fields[key] == value, key


def test_from_sections_reads_the_composed_experiment():
    cfg = compose_train(["experiment=vp_toy", "optim.eps=1e-6", "optim.name=adamw"])
    s = TrainSettings.from_sections(trainer=dict(cfg.trainer), optim=dict(cfg.optim), seed=7,
                                    sampler={"name": "ddim", "steps": 3})
    assert (s.steps, s.batch_size, s.lr, s.adam_eps, s.optimizer, s.seed) == (
        3000, 256, 2e-3, 1e-6, "adamw", 7)
    assert s.sampler == {"name": "ddim", "steps": 3}


@pytest.mark.parametrize("changes,message", [
    ({"steps": -5}, "trainer.steps must be an integer >= 1, got -5"),
    ({"steps": "abc"}, "trainer.steps must be an integer >= 1, got 'abc'"),
    ({"batch_size": 2.5}, "trainer.batch_size must be an integer"),
    ({"channels_last": "no"}, "trainer.channels_last must be true or false, got 'no'"),
    ({"lr": 0.0}, "optim.lr must be a number > 0"),
    ({"adam_eps": -1.0}, "optim.eps must be a number > 0"),
    ({"ema_decay": 1.0}, r"trainer.ema_decay must be in \[0, 1\)"),
    ({"betas": (0.9,)}, "optim.betas must be two numbers"),
])
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**changes)


def test_command_line_bad_value_is_one_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", "sde.train", "experiment=vp_toy", "debug=fast",
                           "trainer.steps=abc", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "sde.train: error: trainer.steps must be an integer >= 1, got 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "config.yaml").exists()  # refused before any work


@pytest.mark.parametrize("debug, where", [([], "vp_toy"), (["debug=fast"], "debug/vp_toy")])
def test_paths_group_places_the_run_directories(debug, where):
    """paths.runs moves every run (and debug=fast's into <runs>/debug/); sample/evaluate look
    for runs there too."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=vp_toy", "paths.runs=/scratch/r", *debug],
                      return_hydra_config=True)
        assert cfg.hydra.run.dir.startswith(f"/scratch/r/{where}/")
        assert cfg.hydra.sweep.dir.startswith("/scratch/r/multirun/vp_toy/")
        for name in ("sample", "evaluate"):
            assert compose(name, overrides=["paths.runs=/scratch/r"]).runs_root == "/scratch/r"
