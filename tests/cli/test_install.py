"""A non-editable install runs from any directory: the wheel carries the Hydra configs
(sde/conf), and `python -m sde.train` finds them with no source checkout in sight."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(dest: Path) -> Path:
    """The wheel of a copy of the source tree (so no build/ or egg-info lands in the checkout)."""
    src = dest / "src"
    shutil.copytree(ROOT / "sde", src / "sde", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dest / "wheel"), str(src)], check=True, capture_output=True)
    (wheel,) = (dest / "wheel").glob("sde-*.whl")
    return wheel


@pytest.mark.slow
def test_installed_wheel_trains_vp_toy_from_another_directory(tmp_path):
    site, work = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(build_wheel(tmp_path)).extractall(site)  # a pure-Python wheel installs by unzipping
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    where = subprocess.run([sys.executable, "-c", "import sde; print(sde.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    out = subprocess.run([sys.executable, "-m", "sde.train", "experiment=vp_toy", "debug=fast"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(work.glob("runs/debug/vp_toy/*/checkpoints/ckpt_00000004.pt")), out.stderr[-3000:]
