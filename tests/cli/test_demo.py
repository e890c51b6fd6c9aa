"""The demo (``delve demo``): what it writes and prints, checked against the files read back."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sklearn")

from delve import demo
from delve.tracking.tracker import SaturationTracker

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    stream = io.StringIO()
    code = demo.run_demo(out_dir=str(out), epochs=1, progress=False, stream=stream)
    return out, code, stream.getvalue()


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
        assert {
            "saturation_train_heatmap.png",
            "saturation_eval_heatmap.png",
            "saturation_train_epoch_00000.png",
        } <= plots
    assert (out / demo.COMPARISON_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_prints_table_accuracy_and_paths(demo_run: tuple[Path, int, str]) -> None:
    out, _, text = demo_run
    assert f"tensorboard --logdir {out}" in text
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
