"""The README's promises: the Quickstart block, the training-loop snippet, the key tables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from delve.statistics.registry import STATISTICS
from delve.writers.registry import WRITERS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of a README section, from its underlined title to the next one."""
    match = re.search(rf"^{re.escape(title)}\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", README, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every code-block, dedented."""
    blocks = []
    for match in re.finditer(r"^\.\. code-block:: (\w+)\n\n((?:(?:   .*)?\n)+)", text, re.M):
        lines = [line[3:] for line in match.group(2).splitlines()]
        blocks.append((match.group(1), "\n".join(lines).strip("\n")))
    return blocks


def requirement_lines(path: Path) -> list[str]:
    """Requirements of a file in order, following ``-r`` includes."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirement_lines(path.parent / line[3:].strip())
        elif line:
            lines.append(line)
    return lines


def test_quickstart_first_block_is_two_commands_demo_then_tests() -> None:
    language, code = code_blocks(section("Quickstart"))[0]
    assert language == "bash"
    commands = code.splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("delve demo")
    assert commands[1].endswith("python -m pytest -q")
    for command in commands:
        for requirement in re.findall(r"-r (\S+)", command):
            # torch is pinned first, so pip never reaches for a newer (CUDA) build
            assert requirement_lines(ROOT / requirement)[0] == "torch==2.13.0"
        assert "pip install --no-deps -e ." in command
    assert "scikit-learn" in " ".join(requirement_lines(ROOT / "requirements" / "demo.txt"))


def test_training_loop_snippet_runs_and_writes_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (language, code), *_ = code_blocks(section("In your training loop"))
    assert language == "python"
    monkeypatch.chdir(tmp_path)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    data = torch.randn(40, 6)

    def train_one_epoch(model: nn.Module) -> None:
        for batch in data.split(10):
            model(batch)

    namespace = {"model": model, "epochs": 2, "train_one_epoch": train_one_epoch}
    exec(compile(code, "README.rst", "exec"), namespace)

    frame = pd.read_csv(tmp_path / "runs" / "vgg.csv", sep=";", index_col=0)
    assert list(frame.index) == [0, 1]
    assert {"train-saturation_0", "train-saturation_2"} <= set(frame.columns)
    assert any(path.name.startswith("events.out.tfevents") for path in (tmp_path / "runs" / "vgg").iterdir())
    assert any((tmp_path / "runs" / "vgg" / "plots").glob("*.png"))
    assert not model._forward_hooks and not model[0]._forward_hooks  # close() removed them


def test_statistics_table_matches_the_registry() -> None:
    rows = re.findall(r"^``(\w+)``\s+``([\w-]+)``", section("Statistics"), re.M)
    documented = dict(rows)
    for key, name in documented.items():
        assert STATISTICS[key].name == name
    # Tests and doctests register statistics of their own; ask a fresh interpreter for the built-in set.
    listed = subprocess.run(
        [sys.executable, "-c", "import delve.statistics.registry as s; print(' '.join(s.STATISTICS))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    ).stdout.split()
    assert {"lsat", "idim", "cov", "det", "trc", "dtrc", "embed"} <= set(listed)
    assert set(documented) == set(listed)


def test_statistics_table_describes_each_statistic_as_its_record_does() -> None:
    """The value column is the record's description (wrapped lines joined)."""
    table = section("Statistics").split("=========  ", 1)[1]
    descriptions: dict[str, str] = {}
    key = None
    for line in table.splitlines():
        match = re.match(r"^``(\w+)``\s+``[\w-]+``\s+(.*)$", line)
        if match:
            key = match.group(1)
            descriptions[key] = match.group(2).strip()
        elif key and line.startswith(" " * 20) and line.strip():
            descriptions[key] += " " + line.strip()
    assert descriptions
    for key, description in descriptions.items():
        assert description == STATISTICS[key].description, key


def test_writers_table_names_registered_keys() -> None:
    keys = re.findall(r"^``(\w+)``\s{2,}", section("Writers"), re.M)
    assert keys[0] == "save_to"  # the header
    assert set(keys[1:]) == {"csv", "plot", "tensorboard", "npy", "print"}
    assert set(keys[1:]) <= set(WRITERS)
