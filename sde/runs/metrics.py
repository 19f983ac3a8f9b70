"""metrics.json: the one results file of a run, shared by the trainer and `sde.evaluate`.

    {"train": {last values}, "history": [{"step": ..., ...}, ...],      written by the trainer
     "eval": {last values}, "eval_history": [{..., "checkpoint_step"}]}  written by evaluate

Every write is a read-modify-write under an exclusive lock on `metrics.json.lock`, and each
writer replaces only its own keys, so an evaluation running while the run trains is never erased
by the trainer's next write (and vice versa). The file itself is replaced atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sde.runs.files import locked, read_json, write_json

TRAIN_KEYS = ("train", "history")


def metrics_path(run_dir) -> Path:
    return Path(run_dir) / "metrics.json"


def update_metrics(run_dir, change: Callable[[dict], None]) -> dict:
    """Apply `change(data)` to metrics.json under its lock and write it atomically -> the data."""
    path = metrics_path(run_dir)
    with locked(path.with_name(path.name + ".lock")):
        data = read_json(path)
        change(data)
        write_json(path, data)
    return data


def record_eval(run_dir, values: dict, details: dict) -> dict:
    """Merge `values` into "eval" and append `values` + `details` to "eval_history"."""

    def change(data: dict) -> None:
        data.setdefault("eval", {}).update(values)
        data.setdefault("eval_history", []).append({**values, **details})

    return update_metrics(run_dir, change)


class MetricsFile:
    """The trainer's part of metrics.json: "train" (last values) and "history" (every log row).

    Other keys (written by `sde.evaluate`, possibly at the same time) are kept."""

    def __init__(self, run_dir, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        saved = read_json(metrics_path(run_dir)) if enabled else {}
        self.data = {"train": saved.get("train", {}), "history": saved.get("history", [])}

    @property
    def path(self) -> Path:
        return metrics_path(self.run_dir)

    def truncate(self, step: int) -> None:
        """Forget history after `step` (on resume from that step)."""
        self.data["history"] = [h for h in self.data["history"] if h["step"] <= step]

    def add(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.data["history"].append(row)
        self.data["train"].update(row)

    def write(self) -> None:
        if self.enabled:
            update_metrics(self.run_dir, lambda data: data.update(self.data))
