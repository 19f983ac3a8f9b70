"""Run logging: Weights & Biases (offline unless WANDB_API_KEY is set), metrics.json, train.log.

Only rank 0 creates a logger; the others get `NullLogger`. `logger=none` switches W&B off;
metrics.json and train.log are always written.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

log = logging.getLogger("sde.train")


class NullLogger:
    """Logs nothing (logger=none, and ranks other than 0)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_image(self, key: str, path, step: int, caption: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """A W&B run in `run_dir/wandb`; mode "online" only when WANDB_API_KEY is set (or WANDB_MODE
    says so), otherwise "offline" (sync later with `wandb sync`)."""

    def __init__(self, *, run_dir, config: dict, project: str = "sde", entity=None, name=None,
                 group=None, tags=(), mode=None, resume_id=None):
        import wandb

        mode = mode or os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.wandb = wandb
        resume_id = resume_id or self._run_id(run_dir)
        self.run = wandb.init(project=project, entity=entity, name=name, group=group,
                              tags=list(tags or []), config=config, dir=str(run_dir), mode=mode,
                              id=resume_id, resume="allow" if resume_id else None)

    def _run_id(self, run_dir) -> str:
        """The W&B run id kept in run_dir/wandb_id.txt, so that a resumed run continues the same
        W&B run (made and saved on the first start)."""
        path = Path(run_dir) / "wandb_id.txt"
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = uuid.uuid4().hex[:8]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
        return run_id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path, step: int, caption: str | None = None) -> None:
        self.run.log({key: self.wandb.Image(str(path), caption=caption)}, step=step)

    def finish(self) -> None:
        self.run.finish()


def make_logger(*, backend: str = "none", run_dir, config: dict, is_main: bool = True,
                **options):
    """The logger `backend` ("wandb" or "none") for rank 0, `NullLogger` elsewhere."""
    if backend not in ("wandb", "none"):
        raise ValueError(f"unknown logger backend {backend!r}; use logger=wandb or logger=none")
    if not is_main or backend == "none":
        return NullLogger()
    options.pop("run_name", None)
    return WandbLogger(run_dir=run_dir, config=config, **options)


def attach_file_log(run_dir) -> None:
    """Send the `sde` loggers to run_dir/train.log (unless Hydra already writes that file)."""
    path = str(Path(run_dir, "train.log").resolve())
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == path for h in root.handlers + log.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


class MetricsFile:
    """metrics.json: {"train": {last values...}, "history": [{"step": ..., ...}, ...]}.

    Other keys (e.g. written by `sde.evaluate`) are kept."""

    def __init__(self, run_dir, enabled: bool = True):
        self.path, self.enabled = Path(run_dir) / "metrics.json", enabled
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("train", {})
        self.data.setdefault("history", [])

    def truncate(self, step: int) -> None:
        """Forget history after `step` (on resume from that step)."""
        self.data["history"] = [h for h in self.data["history"] if h["step"] <= step]

    def add(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.data["history"].append(row)
        self.data["train"].update(row)

    def write(self) -> None:
        if not self.enabled:
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
