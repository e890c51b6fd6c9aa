"""The integrations are optional: the core never imports a framework, a missing one is named with its extra.

The extras in setup.py are read back with ``ast`` and the pinned CI set in
requirements/integrations.txt is checked against them with ``packaging``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"lightning": ("lightning", "lightning"), "huggingface": ("transformers", "huggingface")}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_importing_delve_imports_no_framework() -> None:
    done = run_python(
        "import sys, delve, delve.integrations, delve.integrations._common\n"
        "loaded = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'transformers', 'accelerate'))\n"
        "print(loaded)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(FRAMEWORKS))
def test_a_missing_framework_raises_an_import_error_naming_the_extra(module, monkeypatch) -> None:
    package, extra = FRAMEWORKS[module]
    # A None entry in sys.modules makes every import of that package fail, installed or not.
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, f"delve.integrations.{module}", raising=False)
    with pytest.raises(ImportError) as raised:
        importlib.import_module(f"delve.integrations.{module}")
    assert f"pip install 'delve[{extra}]'" in str(raised.value)
    assert f"delve.integrations.{module}" in str(raised.value)


def test_doctest_collection_skips_integrations_whose_framework_is_missing() -> None:
    done = run_python(
        "import sys, pytest\n"
        "sys.modules['lightning'] = None\n"
        "sys.modules['transformers'] = None\n"
        "sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'delve/integrations']))"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "_common" in done.stdout
    assert "lightning.py" not in done.stdout and "huggingface.py" not in done.stdout


def setup_extras() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_the_pinned_integration_set_satisfies_the_extras() -> None:
    from packaging.requirements import Requirement

    extras = setup_extras()
    loose = {Requirement(line).name: Requirement(line) for key in FRAMEWORKS for line in extras[key]}
    assert set(loose) == {"lightning", "transformers", "accelerate"}

    lines = [line.strip() for line in (ROOT / "requirements" / "integrations.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    # The test set comes first: it pins the CPU build of torch before anything that depends on it.
    assert lines[0] == "-r test.txt"
    pinned = {Requirement(line).name: Requirement(line) for line in lines[1:]}
    assert set(pinned) == set(loose)
    for name, requirement in pinned.items():
        (specifier,) = requirement.specifier
        assert specifier.operator == "=="
        assert loose[name].specifier.contains(specifier.version), f"{name}=={specifier.version} vs {loose[name]}"
