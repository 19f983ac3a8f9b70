"""Logging moved to `sde.runs.logger` and `sde.runs.metrics` (evaluation writes them too); these
names stay importable."""

from sde.runs.logger import NullLogger, WandbLogger, attach_file_log, make_logger  # noqa: F401
from sde.runs.metrics import MetricsFile  # noqa: F401
