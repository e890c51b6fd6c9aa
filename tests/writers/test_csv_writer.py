"""The CSV writer, read back with pandas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.output.formats.csv import EXACT_FLOATS
from delve.writers import AbstractWriter, CSVWriter
from delve.writers.registry import WRITERS, register_writer


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", index_col="epoch", **EXACT_FLOATS)


def test_rows_per_epoch_columns_per_value(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.add_scalar("train-saturation_fc", 1 / 3, epoch=0)
    writer.add_scalar("loss", 2.5, epoch=0)
    writer.add_scalar("train-saturation_fc", 0.1 + 0.2, epoch=1)
    writer.add_scalar("eval-saturation_fc", 1e-300, epoch=1)  # a column that starts late
    writer.add_scalar("det", -math.inf, epoch=1)
    writer.save()
    frame = read(tmp_path / "run.csv")
    assert list(frame.index) == [0, 1]
    assert list(frame.columns) == ["train-saturation_fc", "loss", "eval-saturation_fc", "det"]
    # Floats round-trip exactly.
    assert frame.loc[0, "train-saturation_fc"] == 1 / 3
    assert frame.loc[1, "train-saturation_fc"] == 0.1 + 0.2
    assert frame.loc[1, "eval-saturation_fc"] == 1e-300
    assert frame.loc[1, "det"] == -math.inf
    assert np.isnan(frame.loc[0, "eval-saturation_fc"]) and np.isnan(frame.loc[1, "loss"])


def test_file_format_is_semicolon_separated_with_epoch_index(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.add_scalar("a", 0.5, epoch=0)
    writer.add_scalar("b", 2.0, epoch=0)
    writer.save()
    lines = (tmp_path / "run.csv").read_text().splitlines()
    assert lines == ["epoch;a;b", "0;0.5;2.0"]


def test_epoch_none_goes_to_the_latest_row(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.add_scalar("a", 1.0, epoch=3)
    writer.add_scalar("b", 2.0)
    writer.save()
    frame = read(tmp_path / "run.csv")
    assert list(frame.index) == [3]
    assert frame.loc[3, "b"] == 2.0


def test_numpy_and_torch_scalars_are_accepted_arrays_are_not(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.add_scalar("np", np.float32(0.25), epoch=0)
    writer.add_scalar("torch", torch.tensor(0.75), epoch=0)
    writer.add_scalar("int", 3, epoch=0)
    with pytest.raises(ValueError, match="scalars"):
        writer.add_scalar("array", np.zeros(3), epoch=0)
    writer.add_array("cov", np.eye(2), epoch=0)  # arrays are not CSV material: ignored
    writer.save()
    frame = read(tmp_path / "run.csv")
    assert frame.loc[0].to_dict() == {"np": 0.25, "torch": 0.75, "int": 3.0}


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    writer = CSVWriter(str(tmp_path / "sub" / "run"))
    for epoch in range(3):
        writer.add_scalar("a", float(epoch), epoch=epoch)
        writer.save()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["run.csv"]
    assert list(read(tmp_path / "sub" / "run.csv")["a"]) == [0.0, 1.0, 2.0]


def test_nothing_logged_writes_no_file(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.save()
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_resume_keeps_earlier_epochs_and_drops_later_ones(tmp_path):
    first = CSVWriter(str(tmp_path / "run"))
    for epoch in range(4):
        first.add_scalar("a", epoch + 0.5, epoch=epoch)
        if epoch == 1:
            first.add_scalar("only-epoch-1", 9.0, epoch=epoch)
    first.save()
    second = CSVWriter(str(tmp_path / "run"))
    second.resume_from_saved_state(2)
    second.add_scalar("a", 20.0, epoch=2)
    second.save()
    frame = read(tmp_path / "run.csv")
    assert list(frame.index) == [0, 1, 2]
    assert list(frame["a"]) == [0.5, 1.5, 20.0]
    assert frame.loc[1, "only-epoch-1"] == 9.0 and np.isnan(frame.loc[2, "only-epoch-1"])


def test_resume_without_a_file_starts_empty(tmp_path):
    writer = CSVWriter(str(tmp_path / "run"))
    writer.resume_from_saved_state(5)
    writer.add_scalar("a", 1.0, epoch=5)
    writer.save()
    assert list(read(tmp_path / "run.csv").index) == [5]


def test_tracker_initial_epoch_resumes_the_csv(tmp_path):
    savefile = str(tmp_path / "run")
    model = nn.Sequential(nn.Linear(4, 3))
    returned = []
    with SaturationTracker(savefile, modules=model, stats=["trc"]) as tracker:
        for _ in range(3):
            model(torch.randn(10, 4))
            returned.append(tracker.add_saturations())
    with SaturationTracker(savefile, modules=model, stats=["trc"], initial_epoch=2) as tracker:
        model(torch.randn(10, 4))
        returned[2] = tracker.add_saturations()
    frame = read(savefile + ".csv")
    assert list(frame.index) == [0, 1, 2]
    assert list(frame["train-covariance-trace_0"]) == [values["train-covariance-trace_0"] for values in returned]


class ListWriter(AbstractWriter):
    def __init__(self, savepath: str = "", **kwargs) -> None:
        super().__init__(savepath)
        self.kwargs = kwargs
        self.scalars: list[tuple] = []
        self.arrays: list[tuple] = []
        self.saves = 0

    def add_scalar(self, name, value, epoch=None, **kwargs):
        self.scalars.append((epoch, name, value))

    def add_array(self, name, value, epoch=None):
        self.arrays.append((epoch, name, value.shape))

    def save(self):
        self.saves += 1


def test_writer_instances_and_registered_keys_receive_the_values(tmp_path):
    saved = dict(WRITERS)
    try:
        register_writer("listing", ListWriter)
        instance = ListWriter()
        model = nn.Sequential(nn.Linear(4, 3))
        with SaturationTracker(
            str(tmp_path / "run"),
            save_to=["csv", instance, "listing"],
            modules=model,
            stats=["lsat", "cov"],
            writer_args={"colour": "blue"},
        ) as tracker:
            model(torch.randn(10, 4))
            tracker.add_scalar("loss", 0.5)
            values = tracker.add_saturations()
            built = [w for w in tracker.writer.writers if isinstance(w, ListWriter) and w is not instance]
    finally:
        WRITERS.clear()
        WRITERS.update(saved)
    assert len(built) == 1 and built[0].kwargs == {"colour": "blue"} and built[0].savepath == str(tmp_path / "run")
    for writer in (instance, built[0]):
        assert (0, "train-saturation_0", values["train-saturation_0"]) in writer.scalars
        assert (0, "loss", 0.5) in writer.scalars
        assert writer.arrays == [(0, "train-covariance-matrix_0", (3, 3))]
        assert writer.saves >= 1
    frame = read(tmp_path / "run.csv")
    assert frame.loc[0, "train-saturation_0"] == values["train-saturation_0"]


def test_savefile_with_csv_suffix_is_not_doubled(tmp_path):
    writer = CSVWriter(str(tmp_path / "run.csv"))
    writer.add_scalar("a", 1.0, epoch=0)
    writer.save()
    assert [p.name for p in tmp_path.iterdir()] == ["run.csv"]


def test_counts_are_written_as_integers_and_stay_integers_when_resumed(tmp_path):
    import csv

    # Layer 2 only runs from epoch 1: its columns have an empty first cell.
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    savefile = str(tmp_path / "run")
    logged = []
    with SaturationTracker(savefile, modules=model, stats=["lsat", "idim"], max_overhead=1.0) as tracker:
        model[0](torch.randn(2000, 6))
        tracker.add_scalar("loss", 1.0)
        logged.append(tracker.add_saturations())
        model(torch.randn(2000, 6))
        logged.append(tracker.add_saturations())
    with open(savefile + ".csv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    counts = ["train-intrinsic-dimensionality_0", "train-rows_0", "train-intrinsic-dimensionality_2", "train-rows_2"]
    for epoch, row in enumerate(rows):
        for name in counts:
            expected = logged[epoch].get(name)
            assert row[name] == ("" if expected is None else str(expected)), (epoch, name)
    assert rows[0]["train-rows_2"] == "" and rows[1]["train-rows_2"].isdigit()
    assert "." in rows[0]["train-saturation_0"] and rows[0]["loss"] == "1.0"  # floats stay floats
    frame = read(savefile + ".csv")
    assert frame["train-rows_0"].dtype == np.int64 and frame["train-intrinsic-dimensionality_0"].dtype == np.int64
    assert frame["train-saturation_0"].dtype == np.float64
    # Resumed, the earlier rows are written back as they were, integers included.
    before = (tmp_path / "run.csv").read_text().splitlines()
    with SaturationTracker(savefile, modules=model, stats=["lsat", "idim"], max_overhead=1.0, initial_epoch=2) as again:
        model(torch.randn(2000, 6))
        third = again.add_saturations()
    after = (tmp_path / "run.csv").read_text().splitlines()
    assert after[:3] == before
    assert dict(zip(after[0].split(";"), after[3].split(";")))["train-rows_2"] == str(third["train-rows_2"])
