"""The demo (``delve demo``): what it writes and prints, checked against the files read back."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sklearn")

from delve import demo
from delve.tracking.tracker import SaturationTracker

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")
MODES = ("train", "eval")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    stream = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = demo.run_demo(out_dir=str(out), epochs=1, progress=False, stream=stream)
    assert [str(warning.message) for warning in caught] == []  # the demo warns about nothing, itself included
    return out, code, stream.getvalue()


def test_a_second_demo_in_the_same_folder_starts_afresh_without_warnings(tmp_path) -> None:
    # Run again into the same folder: the earlier run's files are replaced, not refused or appended to.
    again = tmp_path / "again"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            assert demo.run_demo(out_dir=str(again), epochs=1, progress=False, stream=io.StringIO()) == 0
    for spec in demo.DEMO_NETWORKS:
        assert list(pd.read_csv(again / f"{spec.name}.csv", sep=";", index_col=0).index) == [0]
        events = [p for p in (again / spec.name).iterdir() if p.name.startswith("events.out.tfevents")]
        assert len(events) == 1


def test_demo_writes_csv_tensorboard_and_plots(demo_run: tuple[Path, int, str]) -> None:
    out, code, _ = demo_run
    assert code == 0
    for spec in demo.DEMO_NETWORKS:
        frame = pd.read_csv(out / f"{spec.name}.csv", sep=";", index_col=0)
        assert list(frame.index) == [0]
        for layer in LAYERS:
            for mode in ("train", "eval"):
                saturation = frame[f"{mode}-saturation_{layer}"].to_numpy()
                k = frame[f"{mode}-intrinsic-dimensionality_{layer}"].to_numpy()
                assert np.all((saturation > 0) & (saturation <= 1))
                # saturation = k / d with d the layer's width, read from the network spec
                width = demo.layer_widths(demo.build_network(spec))[layer]
                np.testing.assert_allclose(saturation, k / width)
        assert frame["test-accuracy"].between(0, 1).all()
        assert any(p.name.startswith("events.out.tfevents") for p in (out / spec.name).iterdir())
        plots = {p.name for p in (out / spec.name / "plots").iterdir()}
        stats = ("saturation", "intrinsic-dimensionality")
        profiles = {f"{stat}_{mode}_profile.png" for stat in stats for mode in MODES}
        assert plots == profiles | {f"saturation_{mode}_heatmap.png" for mode in MODES} | {"verdicts.png"}
        # The run record says what each layer is, so figures and summaries read back can say it too.
        record = json.loads((out / f"{spec.name}.run.json").read_text())
        model = demo.build_network(spec)
        assert record["widths"] == demo.layer_widths(model)
        assert record["descriptions"]["fc1"] == f"Linear {4 * spec.channels[2]}->{spec.hidden}"
        assert record["descriptions"]["conv2"] == f"Conv2d {spec.channels[0]}->{spec.channels[1]}"
        # Counts are integers in the CSV: read back as such by csv and pandas.
        with open(out / f"{spec.name}.csv", newline="") as handle:
            row = next(csv.DictReader(handle, delimiter=";"))
        assert row["train-intrinsic-dimensionality_fc1"].isdigit()
        assert frame["train-intrinsic-dimensionality_fc1"].dtype == np.int64
    assert (out / demo.COMPARISON_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_prints_table_accuracy_and_paths(demo_run: tuple[Path, int, str]) -> None:
    out, _, text = demo_run
    assert f"tensorboard --logdir {out}" in text
    assert f"delve summary {out}" in text and f"delve plot {out}" in text
    assert "'Acting on the numbers' in the documentation, docs/acting.rst" in text
    assert (Path(__file__).resolve().parents[2] / "docs" / "acting.rst").is_file()
    assert str(out / "lean.csv") in text and str(out / "wide.csv") in text
    table_rows = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] and line.split()[0] in LAYERS}
    assert set(table_rows) == set(LAYERS)
    for index, spec in enumerate(demo.DEMO_NETWORKS):
        frame = pd.read_csv(out / f"{spec.name}.csv", sep=";", index_col=0)
        last = frame.iloc[-1]
        for layer in LAYERS:
            cells = re.findall(r"(\d\.\d\d) \(\s*(\d+) /\s*(\d+)\)", table_rows[layer])
            saturation, k, width = cells[index]
            assert float(saturation) == pytest.approx(last[f"train-saturation_{layer}"], abs=0.0051)
            assert int(k) == last[f"train-intrinsic-dimensionality_{layer}"]
            assert int(width) == demo.layer_widths(demo.build_network(spec))[layer]
        assert f"{last['test-accuracy']:.1%}" in text


def test_the_report_the_demo_points_to_reads_both_runs(demo_run: tuple[Path, int, str], capsys) -> None:
    from delve.cli import main

    out, _, text = demo_run
    assert f"delve report {out}" in text
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    for spec in demo.DEMO_NETWORKS:
        frame = pd.read_csv(out / f"{spec.name}.csv", sep=";", index_col=0)
        assert spec.name in printed
        # conv1's row shows the last epoch's train saturation the CSV holds.
        assert f"{frame.iloc[-1]['train-saturation_conv1']:.2f}" in printed


def test_network_statistics_match_numpy_on_the_layer_outputs() -> None:
    """One demo network, one batch: the tracker agrees with numpy on the captured outputs."""
    model = demo.build_network(demo.DEMO_NETWORKS[0])
    captured: dict[str, torch.Tensor] = {}
    for name in ("conv2", "fc1"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o.detach()))
    images = torch.rand(50, 1, 8, 8)
    with SaturationTracker("unused", modules=model, nosave=True, stats=["idim"]) as tracker:
        model(images)
        values = tracker.add_saturations()
    for name, output in captured.items():
        # channelwise: every pixel position is a sample of a channels-long vector
        rows = (
            output.double().movedim(1, -1).reshape(-1, output.shape[1]).numpy()
            if output.ndim == 4
            else output.double().numpy()
        )
        spectrum = np.clip(np.linalg.eigvalsh(np.cov(rows, rowvar=False, bias=True))[::-1], 0, None)
        expected_k = int(np.searchsorted(np.cumsum(spectrum) / spectrum.sum(), 0.99) + 1)
        assert values[f"train-intrinsic-dimensionality_{name}"] == expected_k


def test_missing_scikit_learn_gives_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert demo.run_demo(out_dir=str(tmp_path / "out"), epochs=1, progress=False) == 1
    assert "pip install delve[demo]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("epochs", [0, -1, True, 1.5])
def test_bad_epochs_are_refused(epochs: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run_demo(out_dir=str(tmp_path), epochs=epochs, progress=False) == 2  # type: ignore[arg-type]
    assert "epochs must be a positive integer" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "delve.demo", "--help"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "--epochs" in done.stdout and "--out" in done.stdout


def test_the_tensorboard_hint_says_how_to_get_tensorboard_when_it_is_missing(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    stream = io.StringIO()
    assert demo.run_demo(out_dir=str(tmp_path), epochs=1, progress=False, stream=stream, plots=False) == 0
    assert "(TensorBoard itself: pip install tensorboard)" in stream.getvalue()
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/" + name)
    stream = io.StringIO()
    assert demo.run_demo(out_dir=str(tmp_path), epochs=1, progress=False, stream=stream, plots=False) == 0
    assert "pip install tensorboard" not in stream.getvalue()


def test_the_demo_requirements_install_tensorboard() -> None:
    root = Path(__file__).resolve().parents[2]
    pins = {}
    for name in ("demo.txt", "test.txt"):
        for line in (root / "requirements" / name).read_text().splitlines():
            if line.startswith("tensorboard=="):
                pins[name] = line
    assert pins["demo.txt"] == pins["test.txt"]  # the same pin in both


def test_delve_plot_and_summary_read_the_demo_folder_back(demo_run, tmp_path, capsys) -> None:
    from matplotlib import image as mpimg

    from delve.cli import main

    out, _, _ = demo_run
    assert main(["summary", str(out), "--stat", "lsat"]) == 0
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if line.startswith("==")] == [
        f"== {spec.name} ({out / (spec.name + '.csv')})" for spec in demo.DEMO_NETWORKS
    ]
    assert "conv1 (Conv2d 1->8)" in text and "fc1 (Linear 256->128)" in text
    # delve plot redraws the demo's figures exactly (same names, same pixels).
    assert main(["plot", str(out), "--out", str(tmp_path)]) == 0
    for spec in demo.DEMO_NETWORKS:
        drawn = sorted(p.name for p in (out / spec.name / "plots").iterdir())
        assert sorted(p.name for p in (tmp_path / spec.name).iterdir()) == drawn
        for name in drawn:
            np.testing.assert_array_equal(
                mpimg.imread(tmp_path / spec.name / name), mpimg.imread(out / spec.name / "plots" / name), err_msg=name
            )
