"""No pickle, safe torch.load, and names that cannot write outside the run folder."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import delve
from delve import SaturationTracker
from delve.writers import WRITERS

ROOT = Path(delve.__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "delve").rglob("*.py"))
DOCS = (
    sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in {".rst", ".py", ".md", ".txt"})
    if (ROOT / "docs").is_dir()
    else []
)
TEXTS = [*SOURCES, *DOCS, *sorted(ROOT.glob("README*")), *sorted((ROOT / "examples").rglob("*.py"))]


def test_sources_exist() -> None:
    assert len(SOURCES) > 10  # the checks below would pass vacuously otherwise


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_and_every_torch_load_is_weights_only(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b", text, re.MULTILINE)
    assert not re.search(r"\bpickle\.(loads?|dumps?|Unpickler|Pickler)\b", text)
    assert "allow_pickle=True" not in text
    for call in re.finditer(r"torch\.load\(", text):
        # The call's argument list, up to the matching parenthesis.
        depth, end = 0, call.end() - 1
        for end in range(call.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        assert "weights_only=True" in text[call.start() : end], f"{path}: {text[call.start() : end + 1]}"


def test_tracker_state_round_trips_under_weights_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    tracker = SaturationTracker("s", modules=model, nosave=True, stats=["lsat", "embed"])
    model(torch.randn(9, 4))
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other = SaturationTracker("s", modules=model, nosave=True, stats=["lsat", "embed"])
    other.load_state_dict(state)
    assert other.compute_saturations().keys() == tracker.compute_saturations().keys()
    tracker.close()
    other.close()


EVIL = ["../x", "../../escape", "..", "/etc/passwd_delve", "a/../../b", "~", "con:..\\x"]


def _one_key_per_writer() -> list[str]:
    keys: dict[type, str] = {}
    for key, writer_class in WRITERS.items():
        keys.setdefault(writer_class, key)
    return sorted(keys.values())


def test_names_cannot_write_outside_the_run_folder(tmp_path, capsys) -> None:
    box = tmp_path / "box"
    box.mkdir()
    keys = _one_key_per_writer()
    assert "csv" in keys
    modules = {name: nn.Linear(4, 3) for name in EVIL}
    tracker = SaturationTracker(str(box / "run"), save_to=keys, modules=modules, stats=["lsat", "cov", "embed", "trc"])
    absolute = str(tmp_path / "absolute_escape")
    for epoch in range(2):
        with torch.no_grad():
            for module in modules.values():
                module(torch.randn(16, 4))
        for name in [*EVIL, absolute]:
            tracker.add_scalar(name, float(epoch))
        tracker.add_saturations()
    tracker.close()
    capsys.readouterr()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"], keys
    assert not Path("/etc/passwd_delve").exists()
    escaped = [p for p in box.rglob("*") if not p.resolve().is_relative_to(box.resolve())]
    assert not escaped
    # The values themselves were written, under sanitised names.
    import pandas as pd

    frame = pd.read_csv(box / "run.csv", sep=";", index_col=0)
    assert frame.loc[1, "../x"] == 1.0
    assert frame.loc[1, absolute] == 1.0
    if "npy" in keys:
        arrays = list((box / "run" / "npy").rglob("*.npy"))
        assert arrays and all(np.load(p, allow_pickle=False) is not None for p in arrays)
