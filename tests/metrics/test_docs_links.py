"""Every relative link of the README and the docs pages resolves to an existing file, and the
README stays short (issue 11 section 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# docs pages written by other helpers of the same issue, merged with this branch: until then
# they may be missing here (and only they may be)
PENDING = {"docs/schedules.md", "docs/fast-samplers.md", "docs/runs.md", "docs/errors.md",
           "docs/data.md", "docs/controllable.md"}


def relative_links(page: Path) -> list[str]:
    """The link targets of a markdown page that are paths in this repository (no URL, no
    pure anchor), without their #anchor; code blocks are skipped."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = [t.split("#")[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]
LINKS = [(page, target) for page in PAGES for target in relative_links(page)]


def test_readme_links_every_docs_page():
    linked = {str((ROOT / t).resolve().relative_to(ROOT)) for t in relative_links(ROOT / "README.md")}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"
    for name in ("training", "sampling", "evaluation", "models", "converter", "math", "api"):
        assert f"docs/{name}.md" in linked


@pytest.mark.parametrize("page, target", LINKS,
                         ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_link_resolves(page, target):
    path = (page.parent / target).resolve()
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    if not path.exists() and rel in PENDING:
        pytest.skip(f"{rel} is written by another helper; it must exist after the merge")
    assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160
