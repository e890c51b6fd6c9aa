"""TensorBoard writer, read back with the ``tensorboard`` package's EventAccumulator."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn

from delve import SaturationTracker
from delve.writers import TensorBoardWriter
from delve.writers.tensorboard import tensorboard_tag

ALL = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}


def event_dirs(root: Path) -> set[Path]:
    return {path.parent for path in root.rglob("events.out.tfevents.*")}


def accumulate(logdir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(logdir), size_guidance=ALL)
    accumulator.Reload()
    return accumulator


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three epochs with lsat, idim and cov, plus a user scalar."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    model = _model()
    tracker = SaturationTracker(str(root / "run"), save_to="tensorboard", modules=model, stats=["lsat", "idim", "cov"])
    logged = []
    for epoch in range(3):
        model.train()
        model(torch.randn(40, 6))
        model.eval()
        with torch.no_grad():
            model(torch.randn(30, 6))
        tracker.add_scalar("test_accuracy", 0.5 + epoch / 10)
        logged.append(tracker.add_saturations())
    tracker.close()
    return root, logged


def test_tag_names():
    assert tensorboard_tag("train-saturation_features-0") == "saturation/train/features-0"
    assert tensorboard_tag("eval-intrinsic-dimensionality_fc_1") == "intrinsic-dimensionality/eval/fc_1"
    assert tensorboard_tag("train-average-saturation") == "saturation/train/average"
    assert tensorboard_tag("loss") == "loss"


def test_one_run_directory_per_tracker(run):
    root, _ = run
    assert event_dirs(root) == {root / "run"}


def test_scalars_grouped_by_statistic_with_epoch_steps(run):
    root, logged = run
    accumulator = accumulate(root / "run")
    expected = {
        f"{stat}/{mode}/{layer}"
        for stat in ("saturation", "intrinsic-dimensionality")
        for mode in ("train", "eval")
        for layer in ("0", "2")
    } | {"test_accuracy"}
    assert set(accumulator.Tags()["scalars"]) == expected
    for mode in ("train", "eval"):
        events = accumulator.Scalars(f"saturation/{mode}/0")
        assert [event.step for event in events] == [0, 1, 2]
        # TensorBoard stores float32.
        np.testing.assert_allclose(
            [event.value for event in events], [values[f"{mode}-saturation_0"] for values in logged], rtol=1e-6
        )
    idim = accumulator.Scalars("intrinsic-dimensionality/train/2")
    assert [event.value for event in idim] == [values["train-intrinsic-dimensionality_2"] for values in logged]
    accuracy = accumulator.Scalars("test_accuracy")
    np.testing.assert_allclose([e.value for e in accuracy], [0.5, 0.6, 0.7], rtol=1e-6)


def test_custom_scalars_layout_one_multiline_chart_per_statistic_and_mode(run):
    root, _ = run
    accumulator = accumulate(root / "run")
    tensors = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensors[-1].tensor_proto.string_val[0])
    charts = {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in layout.category
    }
    assert set(charts) == {"saturation", "intrinsic-dimensionality"}
    tags = accumulator.Tags()["scalars"]
    import re

    for stat, by_title in charts.items():
        assert len(by_title) == 2  # train and eval
        for title, patterns in by_title.items():
            mode = "train" if "train" in title else "eval"
            # Each chart's pattern selects exactly the layers of its statistic and mode.
            matched = {tag for tag in tags if any(re.search(p, tag) for p in patterns)}
            assert matched == {f"{stat}/{mode}/0", f"{stat}/{mode}/2"}


def test_saturation_profile_image_each_epoch(run):
    root, _ = run
    accumulator = accumulate(root / "run")
    for mode in ("train", "eval"):
        images = accumulator.Images(f"saturation-profile/{mode}")
        assert [image.step for image in images] == [0, 1, 2]
        pixels = mpimg.imread(io.BytesIO(images[-1].encoded_image_string), format="png")
        assert pixels.shape[0] == images[-1].height > 100 and pixels.shape[1] == images[-1].width > 100
        assert pixels[..., :3].std() > 0.01


def test_covariance_logged_as_eigenvalue_histogram(run, ref):
    root, _ = run
    accumulator = accumulate(root / "run")
    assert set(accumulator.Tags()["histograms"]) == {
        f"covariance-eigenvalues/{mode}/{layer}" for mode in ("train", "eval") for layer in ("0", "2")
    }
    events = accumulator.Histograms("covariance-eigenvalues/train/0")
    assert [event.step for event in events] == [0, 1, 2]
    # A histogram of the spectrum: one entry per eigenvalue, all >= 0.
    assert all(event.histogram_value.num == 5 for event in events)
    assert all(event.histogram_value.min >= 0 for event in events)


def test_histogram_values_match_numpy_eigenvalues(tmp_path, ref):
    rows = np.random.default_rng(0).normal(size=(50, 4)) * [3.0, 2.0, 1.0, 0.5]
    cov = ref.cov(rows)
    writer = TensorBoardWriter(str(tmp_path / "run"))
    writer.add_array("train-covariance-matrix_fc", cov, 7)
    writer.add_array("train-embedded-sample_fc", rows[:, :2], 7)  # not logged, no crash
    writer.close()
    histogram = accumulate(tmp_path / "run").Histograms("covariance-eigenvalues/train/fc")[0]
    values = ref.eigenvalues(cov)
    assert histogram.step == 7
    assert histogram.histogram_value.num == 4
    assert histogram.histogram_value.sum == pytest.approx(values.sum(), rel=1e-9)
    assert histogram.histogram_value.max == pytest.approx(values.max(), rel=1e-9)
    assert histogram.histogram_value.sum_squares == pytest.approx((values**2).sum(), rel=1e-9)


def test_other_add_calls_are_forwarded_with_epoch_as_step(tmp_path):
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="tb", modules=model)
    model(torch.randn(20, 6))
    tracker.add_image("inputs", np.full((3, 8, 8), 0.5, dtype=np.float32))
    tracker.add_text("notes", "first epoch")
    tracker.add_saturations()
    tracker.add_image("inputs", np.full((3, 8, 8), 0.25, dtype=np.float32))
    tracker.close()
    accumulator = accumulate(tmp_path / "run")
    assert [image.step for image in accumulator.Images("inputs")] == [0, 1]
    assert event_dirs(tmp_path) == {tmp_path / "run"}


def test_writer_creates_nothing_before_the_first_value(tmp_path):
    writer = TensorBoardWriter(str(tmp_path / "run"))
    writer.save()
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_embedded_sample_is_logged_as_a_scatter_image(tmp_path):
    torch.manual_seed(0)
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="tensorboard", modules=model, stats=["embed"])
    model(torch.randn(40, 6))
    values = tracker.add_saturations()
    tracker.close()
    assert values["train-embedded-sample_0"].shape == (40, 2)
    accumulator = accumulate(tmp_path / "run")
    assert {"embedded-sample/train/0", "embedded-sample/train/2"} <= set(accumulator.Tags()["images"])
    event = accumulator.Images("embedded-sample/train/0")[0]
    assert event.step == 0
    image = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # a drawn figure, not a blank image
