"""Figures: PNGs read back with matplotlib.image; layer order, axes, heatmap growth, memory."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg
from torch import nn

from delve import SaturationTracker
from delve.output.plotting import heatmap_figure, plot_results, profile_figure
from delve.writers import CSVandPlottingWriter


def assert_png_drawn(path, min_side: int = 100) -> np.ndarray:
    assert path.is_file(), path
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= min_side, pixels.shape
    rgb = pixels[..., :3]
    assert rgb.std() > 0.01, f"{path} is blank"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10, f"{path} is flat"
    return pixels


def tidy_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["epoch", "mode", "layer", "stat", "value"])


class Deep(nn.Module):
    """Layers whose forward order differs from their definition order, with long names."""

    def __init__(self):
        super().__init__()
        self.head_classifier_projection = nn.Linear(4, 3)
        self.encoder_block_with_a_rather_long_name = nn.Linear(6, 4)

    def forward(self, x):
        return self.head_classifier_projection(torch.relu(self.encoder_block_with_a_rather_long_name(x)))


def test_profile_layers_in_given_order_full_names_fixed_axis():
    layers = {"encoder-block-with-a-rather-long-name": 0.25, "head": 1.0, "zzz-last": 0.5}
    figure = profile_figure(layers, "saturation", "train", 4, primary=("test_accuracy", 0.875))
    axes = figure.axes[0]
    assert axes.get_xlim() == (0.0, 1.0)
    labels = [tick.get_text() for tick in axes.get_yticklabels()]
    assert labels == list(layers)
    # First layer drawn at the top: the y axis runs downwards.
    assert axes.get_ylim()[0] > axes.get_ylim()[1]
    widths = [patch.get_width() for patch in axes.patches]
    assert widths == [0.25, 1.0, 0.5]
    assert "test_accuracy = 0.875" in axes.get_title() and "epoch 4" in axes.get_title()


def test_profile_unbounded_stat_and_non_finite_values():
    figure = profile_figure({"a": -12.0, "b": float("-inf"), "c": 3.0}, "covariance-log-determinant", "eval", 0)
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    assert low < -12.0 and high > 3.0
    assert [patch.get_width() for patch in axes.patches] == [-12.0, 3.0]
    assert any(text.get_text().strip() == "-inf" for text in axes.texts)


def test_heatmap_rows_layers_columns_epochs_fixed_colour_scale():
    history = pd.DataFrame({0: [0.1, 0.9], 2: [0.3, np.nan]}, index=["conv", "fc"])
    figure = heatmap_figure(history, "saturation", "train")
    image = figure.axes[0].images[0]
    data = image.get_array()
    assert data.shape == (2, 3)  # epoch 1 missing: a blank column, not a squeezed axis
    assert data.mask[:, 1].all() and data.mask[1, 2]
    assert data[0, 0] == pytest.approx(0.1) and data[0, 2] == pytest.approx(0.3)
    assert image.get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["conv", "fc"]


def test_plot_results_writes_profiles_and_heatmaps(tmp_path):
    results = tidy_frame(
        [
            (e, m, layer, "saturation", v)
            for e in range(2)
            for m in ("train", "eval")
            for layer, v in (("a", 0.2 + e / 10), ("b", 0.8))
        ]
        + [(e, "train", "a", "intrinsic-dimensionality", 3.0) for e in range(2)]
        + [(e, None, None, "test_accuracy", 0.5 + e / 10) for e in range(2)]
    )
    written = plot_results(results, tmp_path, epochs="all", primary_metric="test_accuracy")
    names = sorted(path.name for path in written)
    expected = sorted(
        [f"saturation_{m}_epoch_{e:05d}.png" for e in range(2) for m in ("train", "eval")]
        + [f"intrinsic-dimensionality_train_epoch_{e:05d}.png" for e in range(2)]
        + ["saturation_train_heatmap.png", "saturation_eval_heatmap.png", "verdicts.png"]
    )
    assert names == expected == sorted(p.name for p in tmp_path.iterdir())
    for path in written:
        assert_png_drawn(path)
    # By default the last epoch, under the names the plot writer keeps current; or one file per epoch asked for.
    assert [p.name for p in plot_results(results, tmp_path / "current", heatmap_stats=())] == [
        "saturation_train_profile.png",
        "saturation_eval_profile.png",
        "intrinsic-dimensionality_train_profile.png",
        "verdicts.png",
    ]
    assert [p.name for p in plot_results(results, tmp_path / "last", epochs="last", heatmap_stats=())] == [
        "saturation_train_epoch_00001.png",
        "saturation_eval_epoch_00001.png",
        "intrinsic-dimensionality_train_epoch_00001.png",
        "verdicts.png",
    ]
    # Heatmaps are asked for by key or by logged name.
    assert [p.name for p in plot_results(results, tmp_path / "key", epochs=[], heatmap_stats=["lsat"])] == [
        "saturation_train_heatmap.png",
        "saturation_eval_heatmap.png",
        "verdicts.png",
    ]
    with pytest.raises(ValueError, match="'current', 'last', 'all'"):
        plot_results(results, tmp_path, epochs="first")


def test_plot_writer_draws_each_epoch_and_the_heatmap_grows(tmp_path):
    torch.manual_seed(0)
    model = Deep()
    writer = CSVandPlottingWriter(str(tmp_path / "run"), fontsize=16, primary_metric="test_accuracy")
    tracker = SaturationTracker(str(tmp_path / "run"), save_to=[writer], modules=model)
    plots = tmp_path / "run" / "plots"
    heatmap_widths = []
    for epoch in range(3):
        model(torch.randn(30, 6))
        tracker.add_scalar("test_accuracy", 0.25 * epoch)
        tracker.add_saturations()
        writer.finish_drawing()  # figures are drawn while training goes on; wait for them here
        assert_png_drawn(plots / "saturation_train_profile.png")
        heatmap_widths.append(assert_png_drawn(plots / "saturation_train_heatmap.png").shape[1])
    tracker.close()
    assert heatmap_widths[0] <= heatmap_widths[1] <= heatmap_widths[2]
    # The CSV is there too, in forward order (the encoder runs first).
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(frame.columns) == [
        "test_accuracy",
        "train-saturation_encoder_block_with_a_rather_long_name",
        "train-saturation_head_classifier_projection",
    ]
    np.testing.assert_allclose(frame["test_accuracy"], [0.0, 0.25, 0.5])
    # One profile, redrawn every epoch, the heatmap and the verdict figure: no file per epoch.
    assert sorted(p.name for p in plots.iterdir()) == [
        "saturation_train_heatmap.png",
        "saturation_train_profile.png",
        "verdicts.png",
    ]


def test_plot_writer_profiles_follow_forward_order(tmp_path):
    model = Deep()
    writer = CSVandPlottingWriter(str(tmp_path / "run"))
    tracker = SaturationTracker(str(tmp_path / "run"), save_to=[writer], modules=model)
    model(torch.randn(30, 6))
    tracker.add_saturations()
    tracker.close()
    from delve.output.results import load_results

    results = load_results(tmp_path / "run")
    assert list(results["layer"]) == ["encoder_block_with_a_rather_long_name", "head_classifier_projection"]


def test_figures_are_freed_and_never_registered_with_pyplot(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    def live_figures() -> int:
        gc.collect()
        return sum(type(obj) is Figure for obj in gc.get_objects())

    writer = CSVandPlottingWriter(str(tmp_path / "run"))
    before_pyplot, before = set(plt.get_fignums()), live_figures()
    for epoch in range(4):
        for layer in range(3):
            writer.add_scalar(f"train-saturation_layer{layer}", (layer + epoch) / 8, epoch)
        writer.save()
    writer.finish_drawing()
    # Twelve figures were drawn (a profile, a heatmap and the verdicts per epoch); none is kept alive, so long
    # runs do not grow memory.
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == [
        "saturation_train_heatmap.png",
        "saturation_train_profile.png",
        "verdicts.png",
    ]
    assert live_figures() == before
    assert set(plt.get_fignums()) == before_pyplot


def test_only_the_average_is_drawn_when_layerwise_values_are_off(tmp_path):
    """layerwise_sat=False with average_sat=True: the plot writer draws the average over epochs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    savefile = str(tmp_path / "run")
    tracker = SaturationTracker(savefile, save_to="plot", modules=model, layerwise_sat=False, average_sat=True)
    for _ in range(3):
        model(torch.randn(30, 6))
        assert set(tracker.add_saturations()) == {"train-average-saturation"}
    tracker.close()
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == ["average-saturation_history.png"]
    figure_file = tmp_path / "run" / "plots" / "average-saturation_history.png"
    assert mpimg.imread(figure_file).shape[0] > 100


def test_history_figure_draws_each_mode_over_epochs_on_the_bounded_axis():
    from delve.output.plotting import history_figure

    train = pd.Series([0.5, 0.25, 0.75], index=[0, 1, 2])
    evaluation = pd.Series([0.4, 0.3], index=[1, 2])
    figure = history_figure({"train": train, "eval": evaluation}, "average-saturation")
    axes = figure.axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
    assert lines == {"train": ([0, 1, 2], [0.5, 0.25, 0.75]), "eval": ([1, 2], [0.4, 0.3])}
    assert axes.get_ylim() == (0.0, 1.0)


def test_figures_are_drawn_while_training_goes_on(tmp_path, monkeypatch):
    """save() hands the figures to the drawing thread and returns; the next save waits for them."""
    import threading

    from delve.output import plotting
    from delve.writers import plot as plot_module

    started, release = threading.Event(), threading.Event()
    real = plotting.plot_results

    def slow_plot(*args, **kwargs):
        started.set()
        assert release.wait(timeout=60)
        return real(*args, **kwargs)

    monkeypatch.setattr(plot_module, "plot_results", slow_plot)
    writer = CSVandPlottingWriter(str(tmp_path / "run"))
    writer.add_scalar("train-saturation_fc", 0.5, 0)
    writer.save()  # returns while the drawing thread is still busy
    assert started.wait(timeout=60)
    assert (tmp_path / "run.csv").is_file() and not (tmp_path / "run" / "plots").exists()
    release.set()
    writer.close()
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == [
        "saturation_train_heatmap.png",
        "saturation_train_profile.png",
        "verdicts.png",
    ]


def test_a_drawing_error_is_reported_by_the_next_save(tmp_path, monkeypatch):
    from delve.writers import WriterError
    from delve.writers import plot as plot_module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot_module, "plot_results", broken)
    writer = CSVandPlottingWriter(str(tmp_path / "run"))
    writer.add_scalar("train-saturation_fc", 0.5, 0)
    writer.save()
    with pytest.raises(WriterError, match="No space left on device"):
        writer.close()
