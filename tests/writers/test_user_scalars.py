"""User scalars are not layers: only names the tracker produced are read as per-layer values.

``tracker.add_scalar("eval-acc_top1", 0.9)`` follows the value grammar
``<mode>-<statistic>_<layer>`` by accident; it must stay the user's scalar in
every writer and when the run is read back. Runs of delve 0.1.x, which have no
record of their layers and statistics, fall back to the grammar.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from delve import SaturationTracker, load_results
from delve.cli import main as cli_main
from delve.writers import PrintWriter

USER_SCALARS = {"eval-acc_top1": 0.9, "train-average-loss": 0.25, "test_accuracy": 0.8, "lr": 0.01}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scalars")
    savefile = str(root / "run")
    printed = io.StringIO()
    net = model()
    tracker = SaturationTracker(
        savefile,
        save_to=["csv", "plot", "tensorboard", "npy", PrintWriter(file=printed)],
        modules=net,
        stats=["lsat", "idim"],
        average_sat=True,
    )
    for _ in range(2):
        net.train()
        net(torch.randn(20, 5))
        net.eval()
        with torch.no_grad():
            net(torch.randn(10, 5))
        for name, value in USER_SCALARS.items():
            tracker.add_scalar(name, value)
        tracker.add_saturations()
    tracker.close()
    return Path(savefile), printed.getvalue()


def test_read_back_user_scalars_have_no_mode_and_no_layer(run) -> None:
    savefile, _ = run
    results = load_results(savefile)
    for name in USER_SCALARS:
        rows = results[results["stat"] == name]
        assert len(rows) == 2, name
        assert rows["layer"].isna().all() and rows["mode"].isna().all(), name
    layers = set(results["layer"].dropna())
    assert layers == {"0", "2"}
    averages = results[results["stat"] == "average-saturation"]
    assert set(averages["mode"]) == {"train", "eval"} and averages["layer"].isna().all()


def test_tensorboard_keeps_user_names(run) -> None:
    savefile, _ = run
    accumulator = EventAccumulator(str(savefile), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert set(USER_SCALARS) <= tags
    assert not any(tag.startswith(("acc/", "average-loss/", "loss/")) for tag in tags)
    assert "01-saturation-by-layer/train/0" in tags and "01-saturation/average/eval" in tags


def test_plots_draw_no_user_scalar_as_a_layer_profile(run) -> None:
    savefile, _ = run
    plots = {path.name for path in (savefile / "plots").iterdir()}
    assert "saturation_train_profile.png" in plots
    assert not any(name.startswith(("acc_", "average-loss")) for name in plots), plots


def test_printed_table_and_summary_keep_user_scalars_out_of_the_layers(run, capsys) -> None:
    savefile, printed = run
    # The print writer's epoch tables end before the report it prints at close.
    tables = printed[: printed.index("delve report")].rstrip("\n")
    for text in (tables, _summary(savefile, capsys)):
        lines = text.splitlines()
        assert not [line for line in lines if "top1" in line and " = " not in line]  # no table row
        scalars = lines[-1]
        assert "eval-acc_top1 = 0.9" in scalars and "train-average-loss = 0.25" in scalars


def test_npy_values_read_back_with_user_names(run) -> None:
    savefile, _ = run
    from delve.output.results import load_npy_values

    frame = load_npy_values(savefile / "npy")
    assert frame.loc[1, "eval-acc_top1"] == pytest.approx(0.9)


def test_a_run_of_delve_01x_falls_back_to_the_name_grammar(tmp_path) -> None:
    """Without the record beside the CSV, names are read by the grammar, as delve 0.1.x wrote them."""
    frame = pd.DataFrame({"train-saturation_fc": [0.5], "eval-acc_top1": [0.9]}, index=pd.Index([0], name="epoch"))
    frame.to_csv(tmp_path / "old.csv", sep=";")
    results = load_results(tmp_path / "old")
    parsed = results.set_index("stat").loc[["saturation", "acc"], ["mode", "layer"]]
    assert parsed.to_dict("index") == {
        "saturation": {"mode": "train", "layer": "fc"},
        "acc": {"mode": "eval", "layer": "top1"},
    }
    assert np.isclose(results["value"], [0.5, 0.9]).all()


def _summary(savefile: Path, capsys) -> str:
    capsys.readouterr()
    assert cli_main(["summary", str(savefile)]) == 0
    return capsys.readouterr().out.rstrip("\n")
