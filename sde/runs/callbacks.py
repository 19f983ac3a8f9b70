"""Hydra callbacks of the entries that write a run folder (`sde.train`, `sde.distill`), named
under `hydra.callbacks` in their config files."""

from __future__ import annotations

from hydra.experimental.callback import Callback

from sde.runs.env import exit_on_error
from sde.runs.files import check_writable


class CheckRunDir(Callback):
    """A read-only, full or unwritable run folder (or sweep folder under `-m`) is one clear
    error and exit status 2 before Hydra writes its log file and `.hydra/` there; Hydra's own
    failure would be a traceback ("Unable to configure handler 'file'")."""

    def on_run_start(self, config, **kwargs) -> None:
        exit_on_error(config.hydra.job.name)(check_writable)(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        exit_on_error(config.hydra.job.name)(check_writable)(config.hydra.sweep.dir,
                                                             what="sweep directory")
