"""Tiny class-conditional digits runs for the conditional tests."""

import pytest

from tests.training.conftest import FAST, TINY, compose_train

COND = ["experiment=vp_digits_cond", *FAST, *TINY["ddpmpp"], "model.attn_resolutions=[]",
        "trainer.batch_size=16"]


@pytest.fixture(scope="session")
def cond_run(tmp_path_factory):
    """A tiny vp_digits_cond run of 4 steps (checkpointed), shared by the sampling tests."""
    from sde.train import run

    run_dir = tmp_path_factory.mktemp("cond") / "run"
    run(compose_train([*COND, "trainer.steps=4", "sampler.steps=25"]), run_dir)
    return run_dir


UNCOND = ["experiment=vp_digits", *FAST, *TINY["ddpmpp"], "model.attn_resolutions=[]",
          "trainer.batch_size=16", "trainer.num_samples=0"]
CLASSIFIER = ["experiment=classifier_digits", *FAST, *TINY["ddpmpp"], "model.attn_resolutions=[]",
              "trainer.batch_size=16"]


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory):
    """A tiny classifier_digits run of 2 steps (checkpointed)."""
    from sde.train import run

    run_dir = tmp_path_factory.mktemp("classifier") / "run"
    run(compose_train([*CLASSIFIER, "trainer.steps=2"]), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def uncond_run(tmp_path_factory):
    """A tiny unconditional vp_digits run of 2 steps, for the classifier to guide."""
    from sde.train import run

    run_dir = tmp_path_factory.mktemp("uncond") / "run"
    run(compose_train([*UNCOND, "trainer.steps=2"]), run_dir)
    return run_dir


__all__ = ["COND", "CLASSIFIER", "UNCOND", "compose_train"]
