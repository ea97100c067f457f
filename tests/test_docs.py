"""The docs stay true to the code: the module map of docs/architecture.md names every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_module_map_lists_every_module_and_nothing_else() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Module map", 1)[1]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, re.M))
    modules = {str(p.relative_to(ROOT / "spotzee")) for p in (ROOT / "spotzee").rglob("*.py")} - {"__init__.py"}
    assert modules - listed == set(), "modules missing from the module map"
    assert listed - modules == set(), "the module map names modules that do not exist"


def test_module_names_are_unique_across_the_package() -> None:
    """A path alone says which layer a file is in: no two modules share a name (packages' __init__ aside)."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "spotzee").rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    for package in (ROOT / "spotzee").rglob("__init__.py"):
        seen.setdefault(package.parent.name, []).append(str(package.parent.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert clashes == {}
