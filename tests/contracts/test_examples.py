"""Every script in examples/ runs with a tiny step count, and what it writes is checked.

Each example runs in a subprocess in a temporary folder, as a user would run
it. The checks read the written files back with pandas/json and compare them
with values derived independently (layer widths from the model definitions,
an uninterrupted run for the resume example, the CSV for the custom writer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, tmp_path: Path, *args: str) -> str:
    env = dict(os.environ)
    # The checkout's delve, whether or not it is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--out", str(tmp_path / "out"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col=0)


def load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_saturation_is_k_over_d(frame: pd.DataFrame, column: str, width: int) -> None:
    """A saturation is k / d for an integer k in 1..d."""
    k = frame[column].to_numpy() * width
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert np.all((k >= 1) & (k <= width))


def test_every_example_is_tested() -> None:
    tested = {
        "extract_saturation.py",
        "fully_connected_widths.py",
        "conv_methods_digits.py",
        "lstm_classifier.py",
        "transformer_encoder.py",
        "resume_run.py",
        "custom_writer.py",
        "receptive_field_tail.py",
        "resnet18_digits.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_extract_saturation(tmp_path: Path) -> None:
    stdout = run_example("extract_saturation.py", tmp_path, "--epochs", "1")
    for hidden in (4, 16, 64):
        frame = read_csv(tmp_path / "out" / f"hidden{hidden}.csv")
        assert list(frame.index) == [0]
        np.testing.assert_allclose(
            frame["train-saturation_0"], frame["train-intrinsic-dimensionality_0"] / hidden, rtol=1e-12
        )
        assert_saturation_is_k_over_d(frame, "train-saturation_2", 1)
        assert frame["train-loss"].iloc[0] > 0
        assert f"{frame['train-loss'].iloc[0]:.3f}" in stdout


def test_fully_connected_widths(tmp_path: Path) -> None:
    run_example("fully_connected_widths.py", tmp_path, "--epochs", "1")
    for width in (16, 64, 256):
        frame = read_csv(tmp_path / "out" / f"width{width}.csv")
        layers = {"0": width, "2": width, "4": width, "6": 5}
        for layer, d in layers.items():
            assert_saturation_is_k_over_d(frame, f"train-saturation_{layer}", d)
        mean = frame[[f"train-saturation_{layer}" for layer in layers]].mean(axis=1)
        np.testing.assert_allclose(frame["train-average-saturation"], mean, rtol=1e-12)


def test_conv_methods_digits(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    run_example("conv_methods_digits.py", tmp_path, "--epochs", "1")
    # Features observed per convolution: channels, except flatten (channels x 8 x 8).
    features = {"0": 8, "2": 16}
    for method in ("channelwise", "mean", "max", "median", "flatten"):
        frame = read_csv(tmp_path / "out" / f"{method}.csv")
        for layer, channels in features.items():
            d = channels * 64 if method == "flatten" else channels
            k = frame[f"train-intrinsic-dimensionality_{layer}"]
            np.testing.assert_allclose(frame[f"train-saturation_{layer}"], k / d, rtol=1e-12)
        np.testing.assert_allclose(
            frame["train-saturation_6"], frame["train-intrinsic-dimensionality_6"] / 10, rtol=1e-12
        )


def test_lstm_classifier(tmp_path: Path) -> None:
    run_example("lstm_classifier.py", tmp_path, "--epochs", "1")
    for method in ("last_timestep", "timestepwise"):
        frame = read_csv(tmp_path / "out" / f"{method}.csv")
        for mode in ("train", "eval"):
            assert_saturation_is_k_over_d(frame, f"{mode}-saturation_lstm", 32)
            assert_saturation_is_k_over_d(frame, f"{mode}-saturation_head", 3)
        assert 0 <= frame["test-accuracy"].iloc[0] <= 1
    # Both trackers watched the same model; the per-step view sees more samples, never the same data.
    last = read_csv(tmp_path / "out" / "last_timestep.csv")
    per_step = read_csv(tmp_path / "out" / "timestepwise.csv")
    assert last["test-accuracy"].iloc[0] == per_step["test-accuracy"].iloc[0]


def test_transformer_encoder_records_train_and_eval(tmp_path: Path) -> None:
    run_example("transformer_encoder.py", tmp_path, "--epochs", "1")
    frame = read_csv(tmp_path / "out" / "transformer.csv")
    widths = {"self_attn": 32, "linear1": 64, "linear2": 32}
    for mode in ("train", "eval"):
        for index in (0, 1):
            for part, d in widths.items():
                assert_saturation_is_k_over_d(frame, f"{mode}-saturation_encoder-layers-{index}-{part}", d)
        assert_saturation_is_k_over_d(frame, f"{mode}-saturation_head", 2)


def test_resume_run_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    stdout = run_example("resume_run.py", tmp_path, "--epochs", "3", "--stop-after", "1")
    resumed = read_csv(tmp_path / "out" / "run.csv")
    assert list(resumed.index) == [0, 1, 2]
    assert "holds epochs 0, 1, 2" in stdout

    # The same training without the stop, in this process, through the example's own loop.
    from delve import SaturationTracker

    example = load_module("resume_run.py")
    torch.manual_seed(0)
    model, optimizer = example.build()
    x, y = example.make_data()
    with SaturationTracker(str(tmp_path / "straight"), save_to="csv", modules=model) as tracker:
        example.train_epochs(model, optimizer, tracker, x, y, 0, 3)
    straight = read_csv(tmp_path / "straight.csv")
    pd.testing.assert_frame_equal(resumed, straight, rtol=1e-12)


def test_custom_writer_agrees_with_the_csv_writer(tmp_path: Path) -> None:
    run_example("custom_writer.py", tmp_path, "--epochs", "2")
    frame = read_csv(tmp_path / "out" / "run.csv")
    with open(tmp_path / "out" / "run.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    assert [record["epoch"] for record in records] == [0, 1]
    for record in records:
        epoch = record.pop("epoch")
        assert set(record) == set(frame.columns)
        for name, value in record.items():
            assert frame.loc[epoch, name] == pytest.approx(value, rel=1e-12)
    assert_saturation_is_k_over_d(frame, "train-saturation_0", 16)


def test_receptive_field_tail_prints_the_report_and_draws_the_figure(tmp_path: Path) -> None:
    stdout = run_example("receptive_field_tail.py", tmp_path, "--epochs", "2", "--sizes", "8", "10", "--samples", "300")
    out = tmp_path / "out"
    frame = read_csv(out / "plain8.csv")
    assert list(frame.index) == [0, 1]
    names = [f"conv{index}" for index in range(1, 13)] + ["head"]
    for layer in names:
        assert_saturation_is_k_over_d(frame, f"train-saturation_{layer}", 10 if layer == "head" else 32)
        assert 0.0 <= frame[f"eval-probe-accuracy_{layer}"].iloc[-1] <= 1.0
    # The report: the layers with their fields (1 + 2L pixels after L convolutions), then the findings.
    report = stdout[stdout.index("delve report, epoch 1: 13 layers") :].splitlines()
    assert report[1].split()[:3] == ["layer", "width", "saturation"] and "rf_min" in report[1]
    rows = {line.split()[0]: line for line in report[2:15]}
    assert list(rows) == names
    for index in range(1, 13):
        side = 1 + 2 * index
        assert f" {side}x{side} " in rows[f"conv{index}"]
    record = json.loads((out / "plain8.run.json").read_text())
    assert [record["facts"][f"conv{index}"]["beyond_input"] for index in range(1, 13)] == [False] * 3 + [True] * 9
    figure = mpimg.imread(out / "plain8" / "plots" / "verdicts.png")
    assert figure.shape[0] > 300 and figure.shape[1] > 600 and figure[..., :3].std() > 0.05
    # At 10x10 the border moves to conv5 (11 > 10); both sizes' probes side by side.
    ten = json.loads((out / "plain10.run.json").read_text())
    assert [ten["facts"][f"conv{index}"]["beyond_input"] for index in range(1, 13)] == [False] * 4 + [True] * 8
    probes = mpimg.imread(out / "probes.png")
    assert probes.shape == (400, 1200, 4) and probes[..., :3].std() > 0.05


def test_resnet18_digits_reports_every_convolution_with_its_fields(tmp_path: Path) -> None:
    stdout = run_example("resnet18_digits.py", tmp_path, "--epochs", "1", "--samples", "100")
    frame = read_csv(tmp_path / "out" / "resnet18.csv")
    assert list(frame.index) == [0]
    report = stdout[stdout.index("delve report, epoch 0: 21 layers") :].splitlines()
    rows = {line.split()[0]: line for line in report[2:23]}
    # Forward order: a block's shortcut runs after its second convolution.
    assert list(rows)[:8] == [
        "conv1",
        "layer1-0-conv1",
        "layer1-0-conv2",
        "layer1-1-conv1",
        "layer1-1-conv2",
        "layer2-0-conv1",
        "layer2-0-conv2",
        "layer2-0-shortcut-0",
    ]
    assert list(rows)[-1] == "fc"
    # rf_min by hand: the stem 3, each 3x3 convolution adds 2 jumps; a shortcut path keeps the smaller field.
    assert " 3x3 " in rows["conv1"] and " 5x5 " in rows["layer1-0-conv1"] and " 7x7 " in rows["layer1-0-conv2"]
    assert " 35x35 " in rows["layer4-1-conv2"]
    record = json.loads((tmp_path / "out" / "resnet18.run.json").read_text())
    beyond = [name for name, facts in record["facts"].items() if facts.get("beyond_input")]
    assert beyond == ["layer4-1-conv2"]  # only its smallest field (35) exceeds the 32-pixel input
    assert record["facts"]["layer4-1-conv2"]["rf_max"] == [109, 109]
