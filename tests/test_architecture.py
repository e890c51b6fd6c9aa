"""The architecture page's promises: every module on the map, imports that point down, examples that run.

The module table of ``docs/architecture.rst`` is the one statement of each
module's tier; this test reads it, and the imports of every module (also
those inside functions) from the source.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "delve"
PAGE = (ROOT / "docs" / "architecture.rst").read_text(encoding="utf-8")


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def documented_tiers() -> dict[str, int]:
    rows = re.findall(r"^``(delve[\w.]*)``\s+(\d+)\s+\S", PAGE, re.M)
    assert rows, "no module table in docs/architecture.rst"
    tiers = {}
    for name, tier in rows:
        assert name not in tiers, f"{name} listed twice"
        tiers[name] = int(tier)
    return tiers


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its source, functions included."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
                elif target in modules:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    found.discard(name)
    return found


MODULES = module_names()
GRAPH = {name: imports_of(name, path, set(MODULES)) for name, path in MODULES.items()}


def test_every_module_is_on_the_map_once() -> None:
    tiers = documented_tiers()
    assert sorted(set(MODULES) - set(tiers)) == [], "modules missing from docs/architecture.rst"
    assert sorted(set(tiers) - set(MODULES)) == [], "the map lists modules that do not exist"


def test_imports_point_down() -> None:
    tiers = documented_tiers()
    upward = [
        f"{name} (tier {tiers[name]}) imports {target} (tier {tiers[target]})"
        for name, targets in GRAPH.items()
        for target in targets
        if tiers[target] > tiers[name]
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join((*path, name))
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            visit(target, (*path, name))
        state[name] = "done"

    for name in sorted(GRAPH):
        visit(name, ())


def test_no_module_over_400_lines_and_no_class_over_300() -> None:
    too_long = {}
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > 400:
            too_long[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                too_long[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert too_long == {}


def worked_examples() -> dict[str, str]:
    examples = {}
    for title, body in re.findall(r"^(How to add [^\n]+)\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", PAGE, re.M | re.S):
        blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", body, re.M)
        assert len(blocks) == 1, title
        examples[title] = "\n".join(line[3:] for line in blocks[0].splitlines())
    return examples


@pytest.mark.parametrize("title", sorted(worked_examples()))
def test_worked_example_runs(title: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", worked_examples()[title]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not any(tmp_path.iterdir()), "a worked example left files behind"
