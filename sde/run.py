"""`sde.load_run` moved to `sde.runs.load`; this module stays importable."""

from sde.runs.load import Run, load_run  # noqa: F401
