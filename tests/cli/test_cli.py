"""The ``delve`` command: subcommands, help, and one-line errors with exit code 2."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from delve import SaturationTracker
from delve.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    savefile = str(root / "run")
    tracker = SaturationTracker(savefile, save_to=["csv", "npy"], modules=model, stats=["lsat", "idim", "cov"])
    for epoch in range(2):
        model.train()
        model(torch.randn(40, 6))
        tracker.add_scalar("test_accuracy", 0.5 + epoch / 4)
        tracker.add_saturations()
    tracker.close()
    return savefile


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "delve", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_python_dash_m_summary_prints_the_last_epoch(run):
    done = run_module("summary", run)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(run + ".csv", sep=";", index_col=0)
    lines = done.stdout.splitlines()
    assert lines[0] == "epoch 1"
    assert lines[1].split() == ["layer", "train", "lsat", "train", "idim"]
    # Layers with their class and shape, from the run record alone (the model is not here).
    values = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in lines[2:4]}
    assert list(values) == ["0 (Linear 6->5)", "2 (Linear 5->3)"]
    assert float(values["0 (Linear 6->5)"][0]) == pytest.approx(frame.loc[1, "train-saturation_0"], abs=5e-4)
    assert int(values["2 (Linear 5->3)"][1]) == frame.loc[1, "train-intrinsic-dimensionality_2"]
    assert lines[4] == "test_accuracy = 0.75"


def test_python_dash_m_missing_file_one_line_exit_2(tmp_path):
    done = run_module("summary", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0
    assert "nothing.csv" in done.stderr and "Traceback" not in done.stderr


def test_main_help_for_every_subcommand(capsys):
    for command in ([], ["plot"], ["recompute"], ["summary"], ["demo"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: delve")
    main_help = ""
    with pytest.raises(SystemExit):
        main(["--help"])
    main_help = capsys.readouterr().out
    assert all(name in main_help for name in ("demo", "plot", "recompute", "summary"))


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: delve" in capsys.readouterr().err


def test_plot_redraws_figures(run, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", run, "--out", str(out), "--epochs", "all", "--primary-metric", "test_accuracy"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "intrinsic-dimensionality_train_epoch_00000.png",
        "intrinsic-dimensionality_train_epoch_00001.png",
        "saturation_train_epoch_00000.png",
        "saturation_train_epoch_00001.png",
        "saturation_train_heatmap.png",
        "verdicts.png",
    ]
    for name in names:
        pixels = mpimg.imread(out / name)
        assert min(pixels.shape[:2]) > 100 and pixels[..., :3].std() > 0.01
    assert f"wrote 6 figure(s) to {out}" in capsys.readouterr().out


def test_plot_default_folder_is_the_run_plots_folder(run, capsys):
    assert main(["plot", run + ".csv", "--epochs", "1"]) == 0
    assert sorted(p.name for p in (Path(run) / "plots").iterdir()) == [
        "intrinsic-dimensionality_train_epoch_00001.png",
        "saturation_train_epoch_00001.png",
        "saturation_train_heatmap.png",
        "verdicts.png",
    ]


def test_recompute_prints_and_writes_csv(run, tmp_path, capsys, ref):
    out_csv = tmp_path / "recomputed.csv"
    assert main(["recompute", run + "/npy", "--threshold", "0.5", "--out", str(out_csv)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "threshold 0.5" and printed[1] == "epoch 1"
    frame = pd.read_csv(out_csv, sep=";", index_col=0)
    assert list(frame.index) == [0, 1]
    for epoch in (0, 1):
        for layer in ("0", "2"):
            cov = np.load(f"{run}/npy/train-covariance-matrix_{layer}/epoch_{epoch:05d}.npy", allow_pickle=False)
            assert frame.loc[epoch, f"train-saturation_{layer}"] == pytest.approx(ref.saturation(cov, 0.5))
            assert frame.loc[epoch, f"train-intrinsic-dimensionality_{layer}"] == ref.idim(cov, 0.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["summary", "{tmp}/missing"],
        ["plot", "{tmp}/missing"],
        ["recompute", "{tmp}/missing"],
        ["summary", "{tmp}/corrupt"],
        ["plot", "{tmp}/corrupt.csv"],
        ["recompute", "{tmp}/badnpy"],
        ["summary", "{run}", "--epoch", "7"],
    ],
)
def test_missing_or_corrupt_input_one_line_exit_2(argv, run, tmp_path, capsys):
    (tmp_path / "corrupt.csv").write_bytes(b"\x00\xff\xfe not a csv \x00")
    folder = tmp_path / "badnpy" / "train-covariance-matrix_fc"
    folder.mkdir(parents=True)
    (folder / "epoch_00000.npy").write_bytes(b"truncated")
    argv = [part.format(tmp=tmp_path, run=run) for part in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"delve {argv[0]}: error: ")
    assert "Traceback" not in captured.err


def test_bad_threshold_is_a_usage_error(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["recompute", run + "/npy", "--threshold", "1.5"])
    assert exit_info.value.code == 2
    assert "expected a number in (0, 1]" in capsys.readouterr().err


def test_demo_calls_run_demo_lazily(monkeypatch, tmp_path):
    if importlib.util.find_spec("delve.demo") is None:
        pytest.skip("delve.demo is not there yet; only its --help is tested")
    import delve.demo

    calls = []

    def fake_run_demo(out_dir="delve-demo", epochs=None):
        calls.append((out_dir, epochs))
        return 0

    # The real demo trains for a minute; here only the wiring is checked.
    monkeypatch.setattr(delve.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "2"]) == 0
    assert main(["demo"]) == 0
    assert calls == [(str(tmp_path / "d"), 2), ("delve-demo", None)]


def test_demo_rejects_a_bad_epoch_count(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_console_script_entry_point_resolves_to_main():
    import importlib
    import re

    text = (ROOT / "setup.py").read_text()
    match = re.search(r"[\"']delve\s*=\s*([\w.]+):(\w+)[\"']", text)
    assert match, "setup.py declares no `delve` console script"
    module, attribute = match.groups()
    assert getattr(importlib.import_module(module), attribute) is main


def test_plot_warns_about_an_unknown_primary_metric(run, tmp_path, capsys):
    assert main(["plot", run, "--out", str(tmp_path), "--primary-metric", "test-accuracy"]) == 0
    err = capsys.readouterr().err
    assert "no scalar named 'test-accuracy'; the run has: test_accuracy" in err


@pytest.mark.parametrize("word", ["lsat", "saturation", "idim", "intrinsic-dimensionality"])
def test_summary_takes_a_statistic_by_key_or_logged_name_and_prints_that_word(run, word, capsys):
    assert main(["summary", run, "--stat", word]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["layer", "train", word]
    frame = pd.read_csv(run + ".csv", sep=";", index_col=0)
    column = "saturation" if word in ("lsat", "saturation") else "intrinsic-dimensionality"
    printed = [float(line.split()[-1]) for line in lines[2:4]]
    expected = [frame.loc[1, f"train-{column}_{layer}"] for layer in ("0", "2")]
    assert printed == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("nope", r"has no statistic 'nope'; it holds: saturation, intrinsic-dimensionality \(give a key or a logged"),
        ("erank", r"has no statistic 'erank'; it holds: saturation, intrinsic-dimensionality"),
    ],
)
def test_summary_refuses_a_statistic_the_run_does_not_hold(run, word, message, capsys):
    assert main(["summary", run, "--stat", word]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.search(message, captured.err), captured.err


def _two_runs(folder: Path) -> dict[str, pd.DataFrame]:
    for name, width in (("lean", 3), ("wide", 12)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 2))
        with SaturationTracker(str(folder / name), modules=model, stats=["lsat"]) as tracker:
            model(torch.randn(60, 6))
            tracker.add_scalar("test-accuracy", 0.5)
            tracker.add_saturations()
    return {name: pd.read_csv(folder / f"{name}.csv", sep=";", index_col=0) for name in ("lean", "wide")}


def test_summary_of_a_folder_summarises_each_run(tmp_path, capsys):
    frames = _two_runs(tmp_path)
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["summary", str(tmp_path), "--stat", "lsat"]) == 0
    text = capsys.readouterr().out
    blocks = text.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        f"== lean ({tmp_path / 'lean.csv'})",
        f"== wide ({tmp_path / 'wide.csv'})",
    ]
    for block, (name, frame) in zip(blocks, frames.items()):
        lines = block.splitlines()
        assert lines[1] == "epoch 0" and lines[2].split() == ["layer", "train", "lsat"]
        width = 3 if name == "lean" else 12
        assert lines[3].startswith(f"0 (Linear 6->{width})") and lines[4].startswith(f"2 (Linear {width}->2)")
        printed = [float(line.split()[-1]) for line in lines[3:5]]
        expected = [frame.loc[0, "train-saturation_0"], frame.loc[0, "train-saturation_2"]]
        assert printed == pytest.approx(expected, abs=5e-4)
        assert lines[5] == "test-accuracy = 0.5"


def test_a_run_folder_named_with_a_trailing_slash_is_the_run(run, capsys):
    assert main(["summary", run + "/"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "epoch 1"


def test_plot_of_a_folder_draws_each_run(tmp_path, capsys):
    _two_runs(tmp_path)
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote 3 figure(s) to {tmp_path / 'lean' / 'plots'}",
        f"wrote 3 figure(s) to {tmp_path / 'wide' / 'plots'}",
    ]
    for name in ("lean", "wide"):
        names = sorted(p.name for p in (tmp_path / name / "plots").iterdir())
        assert names == ["saturation_train_heatmap.png", "saturation_train_profile.png", "verdicts.png"]


def test_a_folder_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 2
    message = f"delve summary: error: no delve results in the folder {tmp_path}: it holds no <run>.csv"
    assert capsys.readouterr().err.strip() == message


def test_help_examples_are_the_demo_s_names(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "e.g. test-accuracy" in text and "test_accuracy" not in text
    with pytest.raises(SystemExit):
        main(["summary", "--help"])
    assert "e.g. lsat or saturation" in " ".join(capsys.readouterr().out.split())
