"""The plot writer's figures: how many files, what their titles and bars say, and ``delve plot`` redrawing them.

References are independent of the drawing code: the layers' definitions (class, widths), the values read
back from the CSV with pandas, the scalars the script logged, and pixels read back with matplotlib.image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from delve import SaturationTracker
from delve.cli import main
from delve.output import plotting

STATS = ["lsat", "idim", "erank"]
NAMES = ["saturation", "intrinsic-dimensionality", "effective-rank"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _five_epochs(savefile: str, **writer_args) -> None:
    model = _model()
    with SaturationTracker(savefile, save_to="plot", modules=model, stats=STATS, writer_args=writer_args) as tracker:
        for epoch in range(5):
            model.train()
            for _ in range(4):
                model(torch.randn(32, 8))
            model.eval()
            with torch.no_grad():
                model(torch.randn(32, 8))
            tracker.add_scalar("train-loss", 1.0 / (epoch + 1))
            tracker.add_scalar("test-accuracy", 0.5 + epoch / 10)
            tracker.add_saturations()


@pytest.fixture
def drawn(monkeypatch):
    """What each saved figure shows: file name -> (title, vertical tick labels, texts on the bars)."""
    seen: dict[str, tuple[str, list[str], list[str]]] = {}
    real = plotting.save_figure

    def recording(figure, path, *args, **kwargs):
        axes = figure.axes[0]
        ticks = [label.get_text() for label in axes.get_yticklabels()]
        seen[Path(path).name] = (axes.get_title(), ticks, [text.get_text().strip() for text in axes.texts])
        return real(figure, path, *args, **kwargs)

    monkeypatch.setattr(plotting, "save_figure", recording)
    return seen


def test_one_current_profile_per_statistic_and_mode_plus_the_heatmaps(tmp_path) -> None:
    _five_epochs(str(tmp_path / "toy"))
    names = sorted(path.name for path in (tmp_path / "toy" / "plots").iterdir())
    expected = [f"{name}_{mode}_profile.png" for name in NAMES for mode in ("train", "eval")]
    heatmaps = ["saturation_train_heatmap.png", "saturation_eval_heatmap.png"]
    assert names == sorted([*expected, *heatmaps, "verdicts.png"])
    assert len(names) == 9  # whatever the number of epochs


def test_a_profile_per_epoch_is_an_option(tmp_path) -> None:
    _five_epochs(str(tmp_path / "toy"), epoch_profiles=True)
    names = {path.name for path in (tmp_path / "toy" / "plots").iterdir()}
    modes = ("train", "eval")
    per_epoch = {f"{name}_{mode}_epoch_{epoch:05d}.png" for name in NAMES for mode in modes for epoch in range(5)}
    assert names == per_epoch | {"saturation_train_heatmap.png", "saturation_eval_heatmap.png", "verdicts.png"}
    assert len(names) == 33


def test_titles_name_the_run_the_accuracy_and_bars_say_k_and_d(tmp_path, drawn) -> None:
    savefile = str(tmp_path / "toy-run")
    _five_epochs(savefile)
    frame = pd.read_csv(savefile + ".csv", sep=";", index_col=0)
    widths = {"0": 16, "2": 4}  # the layers' out_features
    # The last call drew the last epoch; every title starts with the run's name.
    for name, (title, _, _) in drawn.items():
        assert title.startswith("toy-run: "), (name, title)
    title, ticks, texts = drawn["saturation_train_profile.png"]
    assert title == "toy-run: saturation (train), epoch 4\ntest-accuracy = 0.9"  # found without configuration
    assert ticks == ["0 (Linear 8->16)", "2 (Linear 16->4)"]
    for layer, text in zip(("0", "2"), texts):
        k = int(frame.loc[4, f"train-intrinsic-dimensionality_{layer}"])
        saturation = frame.loc[4, f"train-saturation_{layer}"]
        assert saturation == k / widths[layer]
        assert text.endswith(f"({k}/{widths[layer]})"), text
    _, _, texts = drawn["intrinsic-dimensionality_eval_profile.png"]
    ks = [int(frame.loc[4, f"eval-intrinsic-dimensionality_{layer}"]) for layer in widths]
    assert texts == [f"{k} of {d}" for k, d in zip(ks, widths.values())]
    title, ticks, _ = drawn["saturation_eval_heatmap.png"]
    assert title == "toy-run: saturation (eval) per layer and epoch"
    assert ticks == ["0 (Linear 8->16)", "2 (Linear 16->4)"]


def test_no_accuracy_logged_no_metric_shown_and_none_switches_it_off(tmp_path, drawn) -> None:
    model = _model()
    with SaturationTracker(str(tmp_path / "a"), save_to="plot", modules=model) as tracker:
        model(torch.randn(32, 8))
        tracker.add_scalar("train-loss", 0.5)
        tracker.add_saturations()
    assert drawn["saturation_train_profile.png"][0] == "a: saturation (train), epoch 0"
    drawn.clear()
    off = {"primary_metric": None}
    with SaturationTracker(str(tmp_path / "b"), save_to="plot", modules=model, writer_args=off) as tracker:
        model(torch.randn(32, 8))
        tracker.add_scalar("test-accuracy", 0.5)
        tracker.add_saturations()
    assert drawn["saturation_train_profile.png"][0] == "b: saturation (train), epoch 0"


def test_delve_plot_redraws_exactly_what_the_writer_drew(tmp_path, capsys) -> None:
    savefile = str(tmp_path / "toy")
    _five_epochs(savefile)
    plots = tmp_path / "toy" / "plots"
    assert main(["plot", savefile, "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 9 figure(s) to {tmp_path / 'again'}"
    written = sorted(path.name for path in plots.iterdir())
    assert sorted(path.name for path in (tmp_path / "again").iterdir()) == written
    for name in written:
        np.testing.assert_array_equal(mpimg.imread(tmp_path / "again" / name), mpimg.imread(plots / name), err_msg=name)
    # Into the run's own folder: the same files, replaced by identical figures, and said so.
    before = {name: mpimg.imread(plots / name) for name in written}
    assert main(["plot", savefile]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 9 figure(s) to {plots}, replacing 9 file(s)"
    for name in written:
        np.testing.assert_array_equal(mpimg.imread(plots / name), before[name], err_msg=name)
