"""Hydra multirun (`-m`) helpers for the entry points: W&B names per sweep point, and sweeps
that survive a failing point.

Under `-m`, a point that fails (bad values, NaN loss, a full disk...) is logged and recorded and
the sweep goes on with the next point; when the sweep ends, `report_failures` lists every failed
point on stderr and the command exits with status 2. A single run (no `-m`) fails as usual.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from pathlib import Path

from sde.runs.env import EXIT_USER_ERROR

log = logging.getLogger("sde.sweep")
FAILED: list[str] = []


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def run_name(cfg, run_dir: Path) -> dict:
    """W&B name, group and tags of this run (only for logger=wandb): name <experiment>/<run dir>
    (under a sweep: its overrides), group the sweep directory, tags `logger.tags` + `tags`."""
    if cfg.logger.get("backend") != "wandb":
        return {}
    from hydra.core.hydra_config import HydraConfig

    name, group = f"{cfg.experiment}/{run_dir.name}", None
    if _multirun():
        hc = HydraConfig.get()
        name = f"{cfg.experiment}/{hc.job.override_dirname or hc.job.num}"
        group = Path(hc.sweep.dir).name
    tags = [*cfg.logger.get("tags", []), *cfg.get("tags", [])]
    return {"name": cfg.logger.get("run_name") or name, "group": cfg.logger.get("group") or group,
            "tags": list(dict.fromkeys(str(t) for t in tags))}


def sweep_point(fn):
    """Under `-m`: catch a failing point's exception, log it and record it for the report."""

    @functools.wraps(fn)
    def wrapped(cfg):
        if not _multirun():
            return fn(cfg)
        from hydra.core.hydra_config import HydraConfig

        try:
            return fn(cfg)
        except Exception as e:  # noqa: BLE001 - every failure of a point is reported at the end
            job = HydraConfig.get().job
            point = f"#{job.num} ({job.override_dirname or 'no overrides'})"
            FAILED.append(f"{point}: {type(e).__name__}: {e}")
            log.error("sweep point %s failed:\n%s", point, traceback.format_exc())
            print(f"sweep point {point} failed: {e}", file=sys.stderr, flush=True)
            return None

    return wrapped


def report_failures(entry: str) -> None:
    """After a sweep: list the failed points on stderr and exit with status 2 if there are any."""
    if FAILED:
        lines = "\n".join(f"  {f}" for f in FAILED)
        print(f"sde.{entry}: error: {len(FAILED)} sweep point(s) failed:\n{lines}", file=sys.stderr,
              flush=True)
        sys.exit(EXIT_USER_ERROR)
