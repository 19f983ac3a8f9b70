"""The architecture's rules, checked on the code: thin entry points that import no other entry
point, inference that never imports training, and runtime dependencies that the package uses."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
SDE = ROOT / "sde"
ENTRY_POINTS = {"sde.train": SDE / "train.py", "sde.sample": SDE / "sample.py",
                "sde.evaluate": SDE / "evaluate.py", "sde.convert.__main__": SDE / "convert" / "__main__.py",
                "sde.distill.__main__": SDE / "distill" / "__main__.py"}
# what draws samples or scores them: never the training side (sde.train, sde.training)
INFERENCE_PACKAGES = ["runs", "sampling", "metrics"]
INFERENCE = [SDE / "sample.py", SDE / "evaluate.py", SDE / "likelihood.py", SDE / "distill" / "sampling.py",
             *sorted(p for d in INFERENCE_PACKAGES for p in (SDE / d).rglob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` anywhere in the file names (lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_entry_point_imports_another():
    for name, path in ENTRY_POINTS.items():
        others = set(ENTRY_POINTS) - {name}
        assert not imported_modules(path) & others, name
    assert "sde.train" not in imported_modules(SDE / "convert" / "export.py")


def test_inference_never_imports_training():
    for path in INFERENCE:
        bad = [m for m in imported_modules(path) if m.startswith(("sde.training", "sde.train"))]
        assert not bad, (path.name, bad)
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in INFERENCE)
    code = (f"import sys, {', '.join(modules)}; sde.runs.load_run; print(sorted(m for m in sys.modules"
            " if m.startswith('sde.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_entry_points_are_thin():
    for name, path in ENTRY_POINTS.items():
        assert len(path.read_text().splitlines()) <= 70, name


# distribution name -> module name, where they differ
MODULE_OF = {"hydra-core": "hydra", "pillow": "PIL", "scikit-learn": "sklearn"}


def _third_party_imports() -> set[str]:
    mods = set()
    for path in SDE.rglob("*.py"):
        mods.update(m.split(".")[0] for m in imported_modules(path))
    return mods - set(sys.stdlib_module_names) - {"sde"}


def test_runtime_dependencies_are_what_the_package_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]]
    declared = {MODULE_OF.get(n, n) for n in names}
    used = _third_party_imports()
    assert declared - used == set(), "declared but never imported: move to dev or drop"
    assert used - declared == set(), "imported but not declared"


def test_one_seed_scheme_for_keyed_streams():
    """The run layer's keyed streams are the training streams' (sde.data): one mixing formula."""
    from sde.data import _seed
    from sde.runs.env import mix_seed, sample_seeds

    for parts in [(0,), (1, 2, 3), (7, 0, 41, 5)]:
        assert mix_seed(*parts) == _seed(*parts)
    assert sample_seeds(2, 3) == [2_000_000, 2_000_001, 2_000_002]


# every `_target_` of the configs of the first release (stored in its runs' checkpoints)
STORED_TARGETS = ["sde.losses.ddpm_loss", "sde.losses.dsm_loss", "sde.losses.smld_loss",
                  "sde.models.ddpm.DDPM", "sde.models.mlp.MLP", "sde.models.ncsnpp.NCSNpp",
                  "sde.sdes.SubVPSDE", "sde.sdes.VESDE", "sde.sdes.VPSDE"]


def test_targets_stored_in_existing_checkpoints_still_resolve():
    from hydra.utils import get_object

    for target in STORED_TARGETS:
        assert callable(get_object(target)), target
