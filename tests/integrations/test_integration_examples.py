"""The integration examples run as a user runs them, and what they log is checked.

Each runs in a subprocess with two epochs. Their output is read back with
pandas and json and checked against what the definitions imply: a
saturation is the intrinsic dimensionality over the layer's width, the
Lightning logger and delve's own CSV hold the same values, and the Trainer's
log history matches delve's CSV.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "integrations"


def run_example(name: str, tmp_path: Path, *args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    # Tiny models: one thread each avoids oversubscribing a shared CPU.
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(tmp_path / "out"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_integration_example_is_tested() -> None:
    assert {path.name for path in EXAMPLES.glob("*.py")} == {"lightning_callback.py", "huggingface_trainer.py"}


def test_lightning_callback_example(tmp_path) -> None:
    pytest.importorskip("lightning")
    stdout = run_example("lightning_callback.py", tmp_path, "--epochs", "2")
    logged = pd.read_csv(tmp_path / "out" / "metrics.csv")
    logged = logged[logged["train-saturation_head"].notna()].set_index("epoch")
    delve_csv = pd.read_csv(tmp_path / "out" / "delve.csv", sep=";", index_col=0)
    assert list(logged.index) == list(delve_csv.index) == [0, 1]
    widths = {"hidden-0": 32, "hidden-2": 32, "head": 4}
    for mode in ("train", "eval"):
        for layer, width in widths.items():
            saturation, k = f"{mode}-saturation_{layer}", f"{mode}-intrinsic-dimensionality_{layer}"
            np.testing.assert_allclose(logged[saturation], logged[k] / width, rtol=1e-12)
            np.testing.assert_allclose(delve_csv[saturation], logged[saturation], rtol=1e-12)
            assert ((logged[k] >= 1) & (logged[k] <= width)).all()
    assert f"{delve_csv.loc[1, 'train-saturation_head']:.3f}" in stdout


def test_huggingface_trainer_example(tmp_path) -> None:
    pytest.importorskip("transformers")
    stdout = run_example("huggingface_trainer.py", tmp_path, "--epochs", "2")
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    records = [r for r in history if any(name.startswith("train-saturation_") for name in r)]
    assert [record["epoch"] for record in records] == [1.0, 2.0]
    delve_csv = pd.read_csv(tmp_path / "out" / "delve.csv", sep=";", index_col=0)
    assert list(delve_csv.index) == [0, 1]
    for epoch, record in enumerate(records):
        values = {k: v for k, v in record.items() if k.startswith(("train-", "eval-"))}
        # The encoder only (layer_filter), training and evaluation, each a k / d saturation.
        assert set(values) == set(delve_csv.columns)
        assert all("encoder" in name for name in values)
        for name, value in values.items():
            assert delve_csv.loc[epoch, name] == pytest.approx(value, rel=1e-12)
            width = 64 if "intermediate" in name else 32
            assert value * width == pytest.approx(round(value * width), abs=1e-9)
    mean = np.mean([v for k, v in records[0].items() if k.startswith("train-saturation_")])
    assert f"epoch 1: mean training saturation {mean:.3f}" in stdout
