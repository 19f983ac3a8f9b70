"""Run logging: Weights & Biases (offline unless WANDB_API_KEY is set) and train.log.

Only rank 0 creates a logger; the others get `NullLogger`. `logger=none` switches W&B off;
metrics.json (`sde.runs.metrics`) and train.log are always written. With a key set but W&B out
of reach (no network, a firewall), the run falls back to offline mode after `timeout` seconds
with one warning, instead of hanging or failing: sync it later with `wandb sync`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("sde.train")
DEFAULT_TIMEOUT = 10.0


class NullLogger:
    """Logs nothing (logger=none, and ranks other than 0)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_image(self, key: str, path, step: int, caption: str | None = None) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the W&B server (WANDB_BASE_URL, default api.wandb.ai) opens
    within `timeout` seconds."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(mode: str | None, timeout: float) -> str:
    """The mode asked for (`mode`, else WANDB_MODE, else online iff WANDB_API_KEY is set), made
    offline with a warning when online W&B cannot be reached within `timeout` seconds."""
    mode = mode or os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode == "online" and not wandb_reachable(timeout):
        warnings.warn(f"W&B is not reachable within {timeout:g} s: logging offline instead "
                      "(sync later with `wandb sync <run>/wandb/offline-run-*`)", stacklevel=2)
        return "offline"
    return mode


class WandbLogger(NullLogger):
    """A W&B run in `run_dir/wandb` (see `wandb_mode` for online / offline)."""

    def __init__(self, *, run_dir, config: dict, project: str = "sde", entity=None, name=None,
                 group=None, tags=(), mode=None, resume_id=None, timeout: float = DEFAULT_TIMEOUT):
        import wandb

        self.wandb = wandb
        resume_id = resume_id or self._run_id(run_dir)
        self.run = wandb.init(project=project, entity=entity, name=name, group=group,
                              tags=list(tags or []), config=config, dir=str(run_dir),
                              mode=wandb_mode(mode, timeout), id=resume_id,
                              resume="allow" if resume_id else None,
                              settings=wandb.Settings(init_timeout=max(timeout, 1.0)))

    def _run_id(self, run_dir) -> str:
        """The W&B run id kept in run_dir/wandb_id.txt, so that a resumed run continues the same
        W&B run (made and saved on the first start)."""
        path = Path(run_dir) / "wandb_id.txt"
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        from sde.runs.files import write_text

        run_id = uuid.uuid4().hex[:8]
        write_text(path, run_id + "\n")
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
