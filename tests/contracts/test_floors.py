"""The versions ``setup.py`` promises are true: the source needs no newer Python, and the docs say so.

The Python floor is checked with vermin, which finds the minimum version a
source file needs; its ``union-types`` feature (with annotations evaluated)
also catches ``X | Y`` unions, which before 3.10 fail at run time outside
annotations. The PyTorch floor was established by running this suite on that
release (docs/install.rst records which); the version-dependent calls go
through :mod:`delve.common.torch_features`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = (ROOT / "setup.py").read_text(encoding="utf-8")
INSTALL = (ROOT / "docs" / "install.rst").read_text(encoding="utf-8")


def declared(requirement: str) -> str:
    match = re.search(rf'"{requirement}>=([\d.]+)"', SETUP)
    assert match, f"setup.py declares no floor for {requirement}"
    return match.group(1)


def python_floor() -> str:
    match = re.search(r'python_requires=">=([\d.]+)"', SETUP)
    assert match, "setup.py declares no python_requires"
    return match.group(1)


def test_the_source_needs_no_python_newer_than_declared() -> None:
    pytest.importorskip("vermin", reason="vermin comes with requirements/test.txt")
    floor = python_floor()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vermin import main; sys.exit(main())",
            "--no-tips",
            "--eval-annotations",
            "--feature",
            "union-types",
            f"-t={floor}-",
            "--violations",
            str(ROOT / "delve"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_installation_page_states_the_declared_floors() -> None:
    assert f"Python {python_floor()} or newer" in INSTALL
    assert f"PyTorch {declared('torch')} or newer" in INSTALL
    assert f"``torch>={declared('torch')}``" in INSTALL
