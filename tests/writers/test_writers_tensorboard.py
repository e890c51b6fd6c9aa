"""TensorBoard writer, read back with the ``tensorboard`` package's EventAccumulator."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn

from delve import SaturationTracker, Statistic, register_statistic
from delve.output.figures import draw_later
from delve.statistics.registry import STATISTICS
from delve.writers import TensorBoardWriter, WriterError
from delve.writers.tensorboard import tensorboard_tag
from delve.writers.tensorboard_tags import section

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
    assert tensorboard_tag("train-saturation_features-0") == "01-saturation-by-layer/train/features-0"
    assert tensorboard_tag("eval-intrinsic-dimensionality_fc_1") == "02-intrinsic-dimensionality-by-layer/eval/fc_1"
    assert tensorboard_tag("train-average-saturation") == "01-saturation/average/train"
    assert tensorboard_tag("train-rows_fc") == "rows-by-layer/train/fc"  # no statistic: no position
    assert tensorboard_tag("loss") == "loss"


def test_sections_follow_the_registry_order():
    # Reference: the registry's own order, read independently of the tag code.
    names = [statistic.name for statistic in STATISTICS.values()]
    assert names[0] == "saturation"
    sections = [section(name) for name in names]
    assert sections == [f"{index + 1:02d}-{name}" for index, name in enumerate(names)]
    # TensorBoard sorts sections by name: the registry's order survives, saturation first.
    assert sorted([*sections, "covariance-eigenvalues", "accuracy", "loss"])[: len(sections)] == sections


def test_a_registered_statistic_comes_after_the_built_ins():
    statistic = Statistic("top", "top-eigenvalue-share", lambda s: 0.0, bounds=(0.0, 1.0))
    register_statistic(statistic)
    try:
        assert section("top-eigenvalue-share") == f"{len(STATISTICS):02d}-top-eigenvalue-share"
    finally:
        del STATISTICS["top"]


def test_one_run_directory_per_tracker(run):
    root, _ = run
    assert event_dirs(root) == {root / "run"}


def test_scalars_grouped_by_statistic_with_epoch_steps(run):
    root, logged = run
    accumulator = accumulate(root / "run")
    expected = {
        f"{prefix}-by-layer/{mode}/{layer}"
        for prefix in ("01-saturation", "02-intrinsic-dimensionality")
        for mode in ("train", "eval")
        for layer in ("0", "2")
    } | {"test_accuracy", "01-saturation/average/train", "01-saturation/average/eval"}
    assert set(accumulator.Tags()["scalars"]) == expected
    for mode in ("train", "eval"):
        events = accumulator.Scalars(f"01-saturation-by-layer/{mode}/0")
        assert [event.step for event in events] == [0, 1, 2]
        # TensorBoard stores float32.
        np.testing.assert_allclose(
            [event.value for event in events], [values[f"{mode}-saturation_0"] for values in logged], rtol=1e-6
        )
        # average_sat=False: the writer takes the layer average itself.
        average = accumulator.Scalars(f"01-saturation/average/{mode}")
        assert [event.step for event in average] == [0, 1, 2]
        np.testing.assert_allclose(
            [event.value for event in average],
            [np.mean([values[f"{mode}-saturation_{layer}"] for layer in ("0", "2")]) for values in logged],
            rtol=1e-6,
        )
    idim = accumulator.Scalars("02-intrinsic-dimensionality-by-layer/train/2")
    assert [event.value for event in idim] == [values["train-intrinsic-dimensionality_2"] for values in logged]
    accuracy = accumulator.Scalars("test_accuracy")
    np.testing.assert_allclose([e.value for e in accuracy], [0.5, 0.6, 0.7], rtol=1e-6)


def test_the_trackers_own_average_is_logged_once(tmp_path):
    torch.manual_seed(0)
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="tensorboard", modules=model, average_sat=True)
    logged = []
    for _ in range(2):
        model(torch.randn(40, 6))
        logged.append(tracker.add_saturations())
    tracker.close()
    events = accumulate(tmp_path / "run").Scalars("01-saturation/average/train")
    assert [event.step for event in events] == [0, 1]
    np.testing.assert_allclose([e.value for e in events], [v["train-average-saturation"] for v in logged], rtol=1e-6)


def read_layout(logdir: Path) -> layout_pb2.Layout:
    tensors = accumulate(logdir).Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensors[-1].tensor_proto.string_val[0])
    return layout


def test_custom_scalars_layout_saturation_first_and_open(run):
    root, _ = run
    layout = read_layout(root / "run")
    assert [category.title for category in layout.category] == ["saturation", "intrinsic-dimensionality"]
    assert [category.closed for category in layout.category] == [False, True]
    tags = accumulate(root / "run").Tags()["scalars"]
    for category in layout.category:
        stat = category.title
        prefix = section(stat)
        titles = [chart.title for chart in category.chart]
        expected = {}
        for mode in ("train", "eval"):
            if stat == "saturation":
                expected[f"{stat} ({mode}): average over layers"] = {f"{prefix}/average/{mode}"}
            layers = {f"{prefix}-by-layer/{mode}/{layer}" for layer in ("0", "2")}
            expected[f"{stat} ({mode}): 0 ... 2 (layers 1-2 of 2)"] = layers
        assert titles == list(expected)
        for chart in category.chart:
            # Each chart's pattern selects exactly its tags among those logged.
            matched = {tag for tag in tags if any(re.search(p, tag) for p in chart.multiline.tag)}
            assert matched == expected[chart.title]


def test_charts_hold_at_most_eight_layers_in_network_order(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(19)])
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="tensorboard", modules=model, stats=["lsat"])
    model(torch.randn(30, 4))
    tracker.add_saturations()
    tracker.close()
    (category,) = read_layout(tmp_path / "run").category
    tags = accumulate(tmp_path / "run").Tags()["scalars"]
    charts = [chart for chart in category.chart if "average" not in chart.title]
    groups = [
        sorted(
            (int(tag.rsplit("/", 1)[1]) for tag in tags if any(re.search(p, tag) for p in chart.multiline.tag)),
        )
        for chart in charts
    ]
    # Network order is 0, 1, ..., 18 (not the sorted names 0, 1, 10, 11, ...).
    assert groups == [list(range(0, 7)), list(range(7, 13)), list(range(13, 19))]
    assert charts[0].title == "saturation (train): 0 ... 6 (layers 1-7 of 19)"


def decoded(event) -> np.ndarray:
    return mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")


def test_profile_and_heatmap_images_each_epoch(run):
    root, _ = run
    accumulator = accumulate(root / "run")
    assert set(accumulator.Tags()["images"]) == {"00-report/figure"} | {
        f"{prefix}/{kind}/{mode}"
        for prefix, kinds in (("01-saturation", ("profile", "heatmap")), ("02-intrinsic-dimensionality", ("heatmap",)))
        for kind in kinds
        for mode in ("train", "eval")
    }
    for tag in accumulator.Tags()["images"]:
        images = accumulator.Images(tag)
        assert [image.step for image in images] == [0, 1, 2]
        pixels = decoded(images[-1])
        assert pixels.shape[0] == images[-1].height > 100 and pixels.shape[1] == images[-1].width > 100
        assert pixels[..., :3].std() > 0.01


def test_image_titles_name_the_run_and_heatmaps_use_fixed_scales(tmp_path, monkeypatch):
    import delve.writers.tensorboard as module

    seen, labels = [], []
    render = module.figure_to_rgb

    def spy(figure):
        axes = figure.axes[0]
        seen.append((axes.get_title(), axes.images[0].get_clim() if axes.images else None))
        ticks = [tick.get_text() for tick in axes.get_yticklabels()]
        labels.append((ticks, [text.get_text().strip() for text in axes.texts]))
        return render(figure)

    monkeypatch.setattr(module, "figure_to_rgb", spy)
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "lean-net"), save_to="tb", modules=model, stats=["lsat", "idim"])
    model(torch.randn(30, 6))
    values = tracker.add_saturations()
    tracker.close()
    # Layers with their class and shape (as _model() defines them), saturation bars with k/d.
    ticks, texts = labels[[title for title, _ in seen].index("lean-net: saturation (train), epoch 0")]
    assert ticks == ["0 (Linear 6->5)", "2 (Linear 5->3)"]
    k = [values[f"train-intrinsic-dimensionality_{layer}"] for layer in ("0", "2")]
    assert [text.split(" (")[1] for text in texts] == [f"{k[0]}/5)", f"{k[1]}/3)"]
    assert sorted(title for title, _ in seen) == [
        "lean-net: intrinsic-dimensionality (train) per layer and epoch",
        "lean-net: saturation (train) per layer and epoch",
        "lean-net: saturation (train), epoch 0",
        "lean-net: saturation, probes and findings per layer, epoch 0",
    ]
    scales = {title: clim for title, clim in seen}
    assert scales["lean-net: saturation (train) per layer and epoch"] == (0.0, 1.0)


def test_covariance_logged_as_eigenvalue_histogram(run, ref):
    root, _ = run
    accumulator = accumulate(root / "run")
    assert set(accumulator.Tags()["histograms"]) == {
        f"03-covariance-eigenvalues-by-layer/{mode}/{layer}" for mode in ("train", "eval") for layer in ("0", "2")
    }
    events = accumulator.Histograms("03-covariance-eigenvalues-by-layer/train/0")
    assert [event.step for event in events] == [0, 1, 2]
    # A histogram of the spectrum: one entry per eigenvalue, all >= 0.
    assert all(event.histogram_value.num == 5 for event in events)
    assert all(event.histogram_value.min >= 0 for event in events)


def test_histogram_values_match_numpy_eigenvalues(tmp_path, ref):
    rows = np.random.default_rng(0).normal(size=(50, 4)) * [3.0, 2.0, 1.0, 0.5]
    cov = ref.cov(rows)
    writer = TensorBoardWriter(str(tmp_path / "run"))
    writer.add_array("train-covariance-matrix_fc", cov, 7)
    writer.add_array("train-embedded-sample_fc", rows[:, :2], 7)
    writer.close()
    histogram = accumulate(tmp_path / "run").Histograms("03-covariance-eigenvalues-by-layer/train/fc")[0]
    values = ref.eigenvalues(cov)
    assert histogram.step == 7
    assert histogram.histogram_value.num == 4
    assert histogram.histogram_value.sum == pytest.approx(values.sum(), rel=1e-9)
    assert histogram.histogram_value.max == pytest.approx(values.max(), rel=1e-9)
    assert histogram.histogram_value.sum_squares == pytest.approx((values**2).sum(), rel=1e-9)


def test_a_missing_covariance_logs_no_histogram_and_prints_nothing(tmp_path, capfd):
    writer = TensorBoardWriter(str(tmp_path / "run"))
    writer.add_array("train-covariance-matrix_fc", np.full((3, 3), np.nan), 0)  # too few rows: missing
    writer.add_array("train-covariance-matrix_head", np.eye(2), 0)
    writer.close()
    assert accumulate(tmp_path / "run").Tags()["histograms"] == ["03-covariance-eigenvalues-by-layer/train/head"]
    assert "NaN" not in capfd.readouterr().out  # tensorboardX prints a line for each non-finite histogram


def test_a_missing_value_is_a_gap_in_the_curve_without_a_warning(tmp_path, caplog):
    writer = TensorBoardWriter(str(tmp_path / "run"))
    with caplog.at_level("WARNING"):
        for epoch, value in enumerate([0.5, float("nan"), 0.25]):
            writer.add_scalar("train-saturation_fc", value, epoch=epoch)
        writer.close()
    tag = next(tag for tag in accumulate(tmp_path / "run").Tags()["scalars"] if tag.endswith("/train/fc"))
    assert [(event.step, event.value) for event in accumulate(tmp_path / "run").Scalars(tag)] == [(0, 0.5), (2, 0.25)]
    assert not [record for record in caplog.records if "NaN" in record.getMessage()]


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
    tags = {"07-embedded-sample-by-layer/train/0", "07-embedded-sample-by-layer/train/2"}
    assert tags <= set(accumulator.Tags()["images"])
    event = accumulator.Images("07-embedded-sample-by-layer/train/0")[0]
    assert event.step == 0
    image = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05  # a drawn figure, not a blank image


def event_order(logdir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every summary value, in the order of the event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = logdir.glob("events.out.tfevents.*")
    return [(value.tag, event.step) for event in EventFileLoader(str(path)).Load() for value in event.summary.value]


def _three_epochs(savefile: Path, background: bool) -> None:
    torch.manual_seed(0)
    model = _model()
    tracker = SaturationTracker(
        str(savefile), save_to="tb", modules=model, stats=["lsat", "embed"], writer_args={"background": background}
    )
    for epoch in range(3):
        model.train()
        model(torch.randn(40, 6))
        model.eval()
        model(torch.randn(30, 6))
        tracker.add_scalar("loss", 1.0 / (epoch + 1))
        tracker.add_saturations()
    tracker.close()


def test_images_drawn_in_the_background_keep_the_event_order(tmp_path):
    _three_epochs(tmp_path / "drawn-later", background=True)
    _three_epochs(tmp_path / "drawn-in-place", background=False)
    later, in_place = event_order(tmp_path / "drawn-later"), event_order(tmp_path / "drawn-in-place")
    assert later == in_place
    images = set(accumulate(tmp_path / "drawn-later").Tags()["images"])
    assert {"01-saturation/profile/eval", "01-saturation/heatmap/train", "07-embedded-sample-by-layer/eval/2"} <= images
    # An epoch's images come after its scalars and before the next epoch's.
    steps = [step for tag, step in later if tag != "custom_scalars__config__"]
    assert steps == sorted(steps)


def test_save_returns_before_the_images_are_drawn(tmp_path, monkeypatch):
    import delve.writers.tensorboard as module

    drawn = []
    render = module.figure_to_rgb
    monkeypatch.setattr(module, "figure_to_rgb", lambda figure: drawn.append(figure) or render(figure))
    gate = threading.Event()
    blocked = draw_later(gate.wait)  # holds delve's one drawing thread
    try:
        writer = TensorBoardWriter(str(tmp_path / "run"))
        writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
        writer.save()
        assert drawn == []  # save() returned without drawing
    finally:
        gate.set()
    blocked.result()
    writer.close()
    assert len(drawn) == 3
    assert set(accumulate(tmp_path / "run").Tags()["images"]) == {
        "00-report/figure",
        "01-saturation/profile/train",
        "01-saturation/heatmap/train",
    }


def test_a_drawing_error_is_raised_by_the_next_call(tmp_path, monkeypatch):
    import delve.writers.tensorboard as module

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "figure_to_rgb", broken)
    writer = TensorBoardWriter(str(tmp_path / "run"))
    writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
    writer.save()
    with pytest.raises(WriterError, match="No space left on device"):
        writer.add_scalar("train-saturation_fc", 0.5, epoch=1)
    monkeypatch.undo()
    writer.close()


def test_the_report_is_logged_as_text_and_as_a_figure_each_epoch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64))
    savefile = tmp_path / "run"
    with SaturationTracker(str(savefile), save_to="tensorboard", modules=model, stats=["lsat", "idim"]) as tracker:
        for _ in range(3):
            model(torch.randn(2048, 4))
            tracker.add_saturations()
        expected = tracker.report()
    accumulator = accumulate(savefile)
    tag = "00-report/findings/text_summary"
    assert tag in accumulator.Tags()["tensors"]
    events = accumulator.Tensors(tag)
    assert [event.step for event in events] == [0, 1, 2]
    text = events[-1].tensor_proto.string_val[0].decode()
    # Markdown: one preformatted block (four spaces), the same report as the tracker's.
    assert text.splitlines()[0] == "    delve report, epoch 2: 2 layers, 1 finding"
    assert expected.loc[1, "findings"] == "idle-width" and "    Findings" in text and "idle-width  2" in text
    assert expected.loc[1, "action"].split(":")[0] in text.replace("\n", " ").replace("    ", " ")
    images = accumulator.Images("00-report/figure")
    assert [image.step for image in images] == [0, 1, 2]
    pixels = decoded(images[-1])
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400


def test_report_false_logs_no_report(tmp_path):
    writer = TensorBoardWriter(str(tmp_path / "run"), report=False)
    writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
    writer.close()
    tags = accumulate(tmp_path / "run").Tags()
    assert "00-report/figure" not in tags["images"] and "00-report/findings/text_summary" not in tags["tensors"]
