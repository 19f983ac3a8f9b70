"""A resumed run continues the same (offline) W&B run: its id is kept in the run directory."""

from sde.training.logging import WandbLogger


def test_resumed_run_keeps_its_wandb_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    first = WandbLogger(run_dir=tmp_path, config={"seed": 0}, project="test")
    run_id = first.run.id
    first.finish()
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    second = WandbLogger(run_dir=tmp_path, config={"seed": 0}, project="test")
    assert second.run.id == run_id
    second.finish()
    other = WandbLogger(run_dir=tmp_path / "other", config={}, project="test")
    assert other.run.id != run_id
    other.finish()
