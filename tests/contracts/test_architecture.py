"""The architecture page's promises: every package on the map, imports that point down, examples that run.

The tier table of ``docs/architecture.rst`` is the one statement of each
package's tier; this test reads it, and the imports of every module (also
those inside functions) from the source. A module belongs to the deepest
entry of the table whose name is a prefix of its own.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    assert rows, "no tier table in docs/architecture.rst"
    tiers = {}
    for name, tier in rows:
        assert name not in tiers, f"{name} listed twice"
        tiers[name] = int(tier)
    return tiers


def owner(module: str, tiers: dict[str, int]) -> str:
    """The deepest table entry that is ``module`` or a package holding it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in tiers:
            return candidate
    raise AssertionError(f"{module} is under no entry of the tier table")


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


def test_every_package_is_on_the_map_once() -> None:
    tiers = documented_tiers()
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    top_modules = {name for name in MODULES if name.count(".") == 1 and name not in packages}
    # Every subpackage directly under delve has a tier; top-level modules are under the root entry or their own.
    direct = {name for name in packages if name.count(".") == 1}
    assert sorted(direct - set(tiers)) == [], "subpackages missing from the tier table"
    assert sorted(set(tiers) - set(MODULES)) == [], "the tier table lists what does not exist"
    for name in top_modules:
        owner(name, tiers)


def test_every_module_is_named_on_the_page() -> None:
    missing = [name for name in MODULES if name != "delve" and f"``{name}``" not in PAGE]
    assert missing == [], "modules the architecture page does not name"


def test_imports_point_down() -> None:
    tiers = documented_tiers()
    upward = []
    for name, targets in GRAPH.items():
        mine = owner(name, tiers)
        for target in targets:
            theirs = owner(target, tiers)
            if tiers[theirs] > tiers[mine]:
                upward.append(f"{name} ({mine}, tier {tiers[mine]}) imports {target} ({theirs}, tier {tiers[theirs]})")
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


def test_packages_import_each_other_without_cycles() -> None:
    tiers = documented_tiers()
    edges: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        mine = owner(name, tiers)
        edges.setdefault(mine, set()).update(owner(t, tiers) for t in targets if owner(t, tiers) != mine)
    # Imports point down or sideways within a tier; sideways edges must not close a loop.
    state: dict[str, str] = {}

    def visit(package: str, path: tuple[str, ...]) -> None:
        if state.get(package) == "done":
            return
        assert state.get(package) != "open", "package cycle: " + " -> ".join((*path, package))
        state[package] = "open"
        for target in sorted(edges.get(package, ())):
            visit(target, (*path, package))
        state[package] = "done"

    for package in sorted(edges):
        visit(package, ())


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


def test_tests_mirror_the_packages() -> None:
    """Each stage's tests are in a folder of its name; cross-cutting suites have their own."""
    tests = ROOT / "tests"
    stages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()} - {"_compat", "demo"}
    folders = {path.name for path in tests.iterdir() if path.is_dir() and any(path.glob("test_*.py"))}
    assert sorted(stages - folders) == []
    assert not list(tests.glob("test_*.py")), "tests belong in the folder of their stage"


def worked_examples() -> dict[str, str]:
    examples = {}
    for title, body in re.findall(r"^(How to add [^\n]+)\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", PAGE, re.M | re.S):
        blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", body, re.M)
        assert len(blocks) == 1, title
        examples[title] = "\n".join(line[3:] for line in blocks[0].splitlines())
    return examples


def test_the_four_worked_examples_are_there() -> None:
    assert sorted(worked_examples()) == [
        "How to add a layer kind",
        "How to add a statistic",
        "How to add a writer",
        "How to add an accumulator",
    ]


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
