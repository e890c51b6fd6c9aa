"""Stopping a run and starting it again with ``initial_epoch=k`` continues every writer.

The reference is one uninterrupted run on the same data: the resumed run must
leave the same CSV, NPY files, TensorBoard steps and plots behind.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as mpimg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from delve import SaturationTracker
from delve.output.formats.record import read_record
from delve.output.plotting import plot_results
from delve.output.results import load_results

SAVE_TO = ["csv", "npy", "tensorboard", "plot"]
STATS = ["lsat", "cov"]


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _inputs(epochs: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(30, 5, generator=generator) for _ in range(epochs)]


def _train(tracker: SaturationTracker, model: nn.Module, batches: list[torch.Tensor], first_epoch: int) -> None:
    for epoch, batch in enumerate(batches, start=first_epoch):
        model(batch)
        tracker.add_scalar("test_accuracy", epoch / 10)
        tracker.add_saturations()


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    images = {tag: [e.step for e in accumulator.Images(tag)] for tag in accumulator.Tags()["images"]}
    histograms = {tag: [e.step for e in accumulator.Histograms(tag)] for tag in accumulator.Tags()["histograms"]}
    return {"scalars": scalars, "images": images, "histograms": histograms}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    batches = _inputs(4)

    model = _model()
    straight = SaturationTracker(str(root / "straight"), save_to=SAVE_TO, modules=model, stats=STATS)
    _train(straight, model, batches, 0)
    straight.close()

    # The interrupted run got through epochs 0-2 before it stopped; epoch 2 was
    # never checkpointed, so training restarts from epoch 2 (initial_epoch=2).
    model = _model()
    first = SaturationTracker(str(root / "resumed"), save_to=SAVE_TO, modules=model, stats=STATS)
    _train(first, model, batches[:3], 0)
    first.close()
    model = _model()
    second = SaturationTracker(str(root / "resumed"), save_to=SAVE_TO, modules=model, stats=STATS, initial_epoch=2)
    _train(second, model, batches[2:], 2)
    second.close()
    return root


def test_csv_continues(runs):
    straight = pd.read_csv(runs / "straight.csv", sep=";", index_col=0)
    resumed = pd.read_csv(runs / "resumed.csv", sep=";", index_col=0)
    assert list(resumed.index) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(resumed, straight)


def test_npy_counters_and_files_continue(runs):
    for name in ("train-saturation_0", "train-covariance-matrix_2", "test_accuracy"):
        for epoch in range(4):
            a = np.load(runs / "straight" / "npy" / name / f"epoch_{epoch:05d}.npy", allow_pickle=False)
            b = np.load(runs / "resumed" / "npy" / name / f"epoch_{epoch:05d}.npy", allow_pickle=False)
            np.testing.assert_array_equal(a, b)
    straight = json.loads((runs / "straight" / "npy" / "counters.json").read_text())
    resumed = json.loads((runs / "resumed" / "npy" / "counters.json").read_text())
    assert resumed == straight
    assert resumed["values"]["train-saturation_0"]["epochs"] == [0, 1, 2, 3]


def test_tensorboard_steps_continue_in_one_run_folder(runs):
    event_files = sorted((runs / "resumed").glob("events.out.tfevents.*"))
    assert len(event_files) == 2  # one per session, same folder: one TensorBoard run
    assert not [p for p in (runs / "resumed").rglob("events.out.tfevents.*") if p.parent != runs / "resumed"]
    straight, resumed = _scalars(runs / "straight"), _scalars(runs / "resumed")
    # The first session's epoch 2 is replaced by the second session's, not duplicated.
    assert resumed["scalars"]["01-saturation-by-layer/train/0"] == straight["scalars"]["01-saturation-by-layer/train/0"]
    assert [step for step, _ in resumed["scalars"]["test_accuracy"]] == [0, 1, 2, 3]
    assert resumed["images"] == straight["images"]
    assert resumed["images"]["01-saturation/profile/train"] == [0, 1, 2, 3]
    assert resumed["images"]["01-saturation/heatmap/train"] == [0, 1, 2, 3]
    assert resumed["histograms"] == straight["histograms"]
    assert resumed["histograms"]["03-covariance-eigenvalues-by-layer/train/2"] == [0, 1, 2, 3]


def test_plots_continue(runs, tmp_path):
    plots = runs / "resumed" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted(p.name for p in (runs / "straight" / "plots").iterdir())
    # The heatmap covers all four epochs and the profile shows the last: the figures of the uninterrupted
    # run's values, drawn under the resumed run's name (titles start with it).
    straight = runs / "straight"
    plot_results(load_results(straight), tmp_path, run="resumed", record=read_record(straight))
    for name in ("saturation_train_heatmap.png", "saturation_train_profile.png"):
        resumed, expected = mpimg.imread(plots / name), mpimg.imread(tmp_path / name)
        assert resumed.shape == expected.shape
        np.testing.assert_array_equal(resumed, expected)


def test_resume_drops_stale_epochs_the_first_session_wrote(tmp_path):
    model = _model()
    save_to, per_epoch = ["csv", "npy", "plot"], {"epoch_profiles": True}
    first = SaturationTracker(str(tmp_path / "run"), save_to=save_to, modules=model, writer_args=per_epoch)
    _train(first, model, _inputs(4), 0)
    first.close()
    # Restart from epoch 1 and stop after one epoch: epochs 2 and 3 of the first session are gone.
    model = _model()
    second = SaturationTracker(
        str(tmp_path / "run"), save_to=save_to, modules=model, writer_args=per_epoch, initial_epoch=1
    )
    _train(second, model, _inputs(1), 1)
    second.close()
    assert list(pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).index) == [0, 1]
    assert sorted(p.name for p in (tmp_path / "run" / "npy" / "train-saturation_0").iterdir()) == [
        "epoch_00000.npy",
        "epoch_00001.npy",
    ]
    counters = json.loads((tmp_path / "run" / "npy" / "counters.json").read_text())
    assert counters["values"]["test_accuracy"]["epochs"] == [0, 1]
    profiles = sorted(p.name for p in (tmp_path / "run" / "plots").glob("*_epoch_*.png"))
    assert profiles == ["saturation_train_epoch_00000.png", "saturation_train_epoch_00001.png"]


def test_resume_from_a_corrupt_csv_fails_clearly(tmp_path):
    from delve.writers import WriterError

    (tmp_path / "run.csv").write_bytes(b"\x00\xff garbage")
    with pytest.raises(WriterError, match=r"cannot resume from .*run\.csv"):
        SaturationTracker(str(tmp_path / "run"), save_to="csv", modules=_model(), initial_epoch=3)
