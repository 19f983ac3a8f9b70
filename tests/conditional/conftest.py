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


__all__ = ["COND", "compose_train"]
