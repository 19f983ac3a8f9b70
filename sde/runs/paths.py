"""Where configs and runs live: the one definition every entry point and test uses.

    CONFIG_DIR   the Hydra configs shipped inside the package (sde/conf), so that an installed
                 `sde` finds them from any working directory
    RUNS_ROOT    the default folder of run directories, relative to the working directory

A run directory is `runs/<experiment>/<timestamp>/` (see docs/runs.md) with
`checkpoints/ckpt_<step:08d>.pt`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = PACKAGE_DIR / "conf"
RUNS_ROOT = "runs"


def experiment_file(name: str) -> Path:
    """The config file of experiment `name` (it may not exist)."""
    return CONFIG_DIR / "experiment" / f"{name}.yaml"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    path = Path(path)
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path


def newest_run(runs_root: str | Path = RUNS_ROOT) -> Path:
    """The run directory under `runs_root` whose newest checkpoint is the most recent."""
    root = Path(runs_root)
    found = {p.parent.parent for p in root.glob("**/checkpoints/ckpt_*.pt")} if root.is_dir() else set()
    if not found:
        raise ValueError(f"no trained run under {root.resolve()}: train one (make train) or pass "
                         "run=DIR_OR_CHECKPOINT")
    return max(found, key=lambda p: max(c.stat().st_mtime for c in p.glob("checkpoints/*")))


def resolve_run(run: str | Path | None, runs_root: str | Path = RUNS_ROOT) -> Path:
    """`run` (a run directory or checkpoint) checked to exist, or the newest run."""
    if run is None or str(run) == "":
        return newest_run(runs_root)
    path = Path(run).expanduser()
    if not path.exists():
        raise ValueError(f"run={run}: no such run directory or checkpoint file (a run directory "
                         "is runs/<experiment>/<timestamp>/ with checkpoints/ckpt_<step>.pt)")
    if path.is_dir() and not any((path / "checkpoints").glob("ckpt_*.pt")):
        raise ValueError(f"run={run}: no checkpoints/ckpt_<step>.pt in this directory; is it a "
                         "run directory of sde.train?")
    return path


def group_config(group: str, name: str):
    """The config-group file `<group>/<name>.yaml` as Hydra composes it: merged over the files of
    the same group its defaults list names (`ddpmpp_deep` is `ddpmpp` with more blocks), without
    the `defaults` key -> an OmegaConf DictConfig (e.g. for `hydra.utils.instantiate`)."""
    from omegaconf import OmegaConf

    own = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    defaults = list(own.pop("defaults", None) or ["_self_"])
    if "_self_" not in defaults:
        defaults.append("_self_")
    parts = [own if d == "_self_" else group_config(group, d) for d in defaults]
    return OmegaConf.merge(*parts)


def config_defaults(name: str, section: str | None = None):
    """The plain, resolved values of config file `name` (e.g. "evaluate.yaml"), or of its key
    `section`: where a library reads its defaults, so that each is written once, in the config."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONFIG_DIR / name)
    node = node[section] if section else node
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
