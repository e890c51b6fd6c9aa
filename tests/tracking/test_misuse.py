"""Misuse gets a message, not silence: no data, a closed tracker, and two runs under one savefile.

Files are read back with pandas; what a closed tracker would have recorded is checked on its state.
"""

from __future__ import annotations

import gc
import re
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.tracking.parameters import TrackerConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def _epochs(tracker: SaturationTracker, model: nn.Module, count: int) -> None:
    for _ in range(count):
        model(torch.randn(20, 5))
        tracker.add_scalar("loss", 0.5)
        tracker.add_saturations()


def test_no_forward_of_the_tracked_model_is_said_once_naming_the_tracker(tmp_path) -> None:
    tracked, other = _model(), _model()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=tracked, nosave=True)
    other(torch.randn(20, 5))  # the model that trains is not the one passed as modules=
    message = r"delve \(.*run\): add_saturations\(\) found no recorded forward pass .*pass the model that trains"
    with pytest.warns(RuntimeWarning, match=message):
        assert tracker.add_saturations() == {}
    tracked(torch.randn(20, 5))
    assert set(tracker.add_saturations()) == {"train-saturation_0", "train-saturation_2"}
    tracker.close()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda tracker: tracker.add_saturations(), "add_saturations()"),
        (lambda tracker: tracker.add_scalar("loss", 0.5), "add_scalar()"),
        (lambda tracker: tracker.add_scalars("test-", {"loss": 0.5}), "add_scalars()"),
        (lambda tracker: tracker.add_text("note", "after the end"), "add_text()"),
    ],
)
def test_recording_after_close_is_an_error(tmp_path, call, name) -> None:
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to=["csv", "tensorboard"], modules=model)
    _epochs(tracker, model, 1)
    model(torch.randn(20, 5))  # recorded, never logged
    tracker.close()
    before = (tmp_path / "run.csv").read_bytes()
    model(torch.randn(20, 5))  # the hooks are gone: nothing is recorded
    assert [recorder.modes["train"].covariance.count for recorder in tracker._recording.recorders.values()] == [20, 20]
    with pytest.raises(RuntimeError, match=rf"\(.*run'\) is closed: {re.escape(name)} after close\(\) would record"):
        call(tracker)
    assert (tmp_path / "run.csv").read_bytes() == before


def test_a_second_open_tracker_on_the_same_savefile_is_refused(tmp_path) -> None:
    savefile = str(tmp_path / "run")
    first = SaturationTracker(savefile, modules=_model())
    with pytest.raises(ValueError, match=r"another open SaturationTracker already writes under savefile .*close"):
        SaturationTracker(savefile, modules=_model())
    with pytest.raises(ValueError, match="already writes under savefile"):
        SaturationTracker(savefile + ".csv", save_to="plot", modules=_model(), append=True)  # the same files
    # Trackers that write no file under it do not compete for it.
    SaturationTracker(savefile, modules=_model(), nosave=True).close()
    SaturationTracker(savefile, save_to="print", modules=_model()).close()
    first.close()
    SaturationTracker(savefile, modules=_model()).close()  # closed: the savefile is free again


def test_a_dropped_tracker_gives_its_savefile_back(tmp_path) -> None:
    model = _model()
    savefile = str(tmp_path / "run")
    SaturationTracker(savefile, modules=model)  # never closed, never kept
    gc.collect()
    tracker = SaturationTracker(savefile, modules=model)
    _epochs(tracker, model, 1)
    tracker.close()
    assert list(pd.read_csv(savefile + ".csv", sep=";", index_col=0).index) == [0]


def test_an_earlier_run_is_not_written_over(tmp_path) -> None:
    savefile = str(tmp_path / "run")
    model = _model()
    with SaturationTracker(savefile, modules=model) as first:
        _epochs(first, model, 2)
    before = (tmp_path / "run.csv").read_bytes()
    second = SaturationTracker(savefile, modules=model)
    message = (
        r"run\.csv already holds epochs 0-1 of an earlier run, and this tracker would write over it\. "
        r"Pass append=True to continue that run \(epochs from 2\), initial_epoch=k"
    )
    with pytest.raises(FileExistsError, match=message):
        second.add_scalar("loss", 0.5)
    model(torch.randn(20, 5))
    with pytest.raises(FileExistsError, match="already holds epochs 0-1"):
        second.add_saturations()
    second.close()
    assert (tmp_path / "run.csv").read_bytes() == before


def test_append_continues_the_earlier_run_after_its_last_epoch(tmp_path) -> None:
    savefile = str(tmp_path / "run")
    model = _model()
    with SaturationTracker(savefile, modules=model, stats=["lsat", "idim"]) as first:
        _epochs(first, model, 2)
    earlier = pd.read_csv(savefile + ".csv", sep=";", index_col=0)
    with SaturationTracker(savefile, modules=model, stats=["lsat", "idim"], append=True) as second:
        assert second.epoch == 2
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _epochs(second, model, 1)
    frame = pd.read_csv(savefile + ".csv", sep=";", index_col=0)
    assert list(frame.index) == [0, 1, 2]
    pd.testing.assert_frame_equal(frame.loc[[0, 1]], earlier)  # the earlier rows, integers included, as they were


def test_append_without_an_earlier_run_starts_at_epoch_0_and_is_declared_once(tmp_path) -> None:
    model = _model()
    with SaturationTracker(str(tmp_path / "new"), modules=model, append=True) as tracker:
        assert tracker.epoch == 0
        _epochs(tracker, model, 1)
    assert list(pd.read_csv(tmp_path / "new.csv", sep=";", index_col=0).index) == [0]
    assert "append" in TrackerConfig.signature().parameters
    assert "append : bool" in SaturationTracker.__doc__


def test_initial_epoch_resumes_without_append(tmp_path) -> None:
    savefile = str(tmp_path / "run")
    model = _model()
    with SaturationTracker(savefile, modules=model) as first:
        _epochs(first, model, 3)
    with SaturationTracker(savefile, modules=model, initial_epoch=1) as second:
        _epochs(second, model, 1)
    assert list(pd.read_csv(savefile + ".csv", sep=";", index_col=0).index) == [0, 1]
