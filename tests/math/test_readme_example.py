"""The README's Gaussian-mixture example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    """The first ```python block that uses GaussianMixture, from README.md or else the section
    notes/readme_foundation.md it was written in."""
    for name in ("README.md", "notes/readme_foundation.md"):
        path = ROOT / name
        if path.exists():
            for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
                if "GaussianMixture" in block and "log_likelihood" in block:
                    return block
    raise AssertionError("no README example with GaussianMixture and log_likelihood found")


def test_readme_example_runs(capsys):
    exec(compile(_example(), "README example", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "closed form" in out
