"""Writers: registry keys, composites, NPY and console output, failures, nosave.

Every artefact is read back with another library than the one that wrote it
(numpy for NPY, json for counters, zipfile for archives, pandas for CSV).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import delve.writers.registry as registry
from delve import SaturationTracker
from delve.writers import (
    WRITERS,
    AbstractWriter,
    CompositeWriter,
    CompositWriter,
    CSVandPlottingWriter,
    CSVWriter,
    NPYWriter,
    PrintWriter,
    TensorBoardWriter,
    WriterError,
    build_writer,
    register_writer,
)


class ListWriter(AbstractWriter):
    """A user writer that implements only the two required methods."""

    def __init__(self, savepath: str = "", **kwargs):
        super().__init__(savepath)
        self.scalars: list[tuple[int, str, float]] = []
        self.saves = 0

    def add_scalar(self, name, value, epoch=None, **kwargs):
        self.scalars.append((epoch, name, value))

    def save(self):
        self.saves += 1


class FailingWriter(ListWriter):
    def __init__(self, fail_in: str, **kwargs):
        super().__init__(**kwargs)
        self.fail_in = fail_in

    def add_scalar(self, name, value, epoch=None, **kwargs):
        if self.fail_in == "add_scalar":
            raise RuntimeError("boom in add_scalar")
        super().add_scalar(name, value, epoch)

    def save(self):
        if self.fail_in == "save":
            raise RuntimeError("boom in save")
        super().save()


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _epoch(model: nn.Module, tracker: SaturationTracker, rows: int = 40) -> dict:
    model.train()
    model(torch.randn(rows, 6))
    model.eval()
    with torch.no_grad():
        model(torch.randn(rows // 2, 6))
    return tracker.add_saturations()


# -------------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("key", "cls"),
    [
        ("csv", CSVWriter),
        ("npy", NPYWriter),
        ("print", PrintWriter),
        ("console", PrintWriter),
        ("tensorboard", TensorBoardWriter),
        ("tb", TensorBoardWriter),
        ("plot", CSVandPlottingWriter),
        ("csvplot", CSVandPlottingWriter),
        ("plotcsv", CSVandPlottingWriter),
        ("csvplotting", CSVandPlottingWriter),
        ("CSV", CSVWriter),
    ],
)
def test_every_save_to_key_builds_its_writer(tmp_path, key, cls):
    composite = build_writer([key], str(tmp_path / "run"))
    assert [type(w) for w in composite.writers] == [cls]
    # Writers create nothing before their first save.
    assert list(tmp_path.iterdir()) == []


def test_unknown_key_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"accepted keys: .*csv.*npy.*tensorboard"):
        build_writer(["csv", "excel"], "run")


def test_compat_names_and_alias():
    assert CompositWriter is CompositeWriter
    assert issubclass(CSVandPlottingWriter, CSVWriter)
    assert {"csv", "npy", "print", "console", "tensorboard", "tb", "plot", "csvplot", "plotcsv", "csvplotting"} <= set(
        WRITERS
    )


def test_writer_args_reach_every_writer_and_others_ignore_them(tmp_path, caplog):
    composite = build_writer(
        ["plot", "npy", "csv"], str(tmp_path / "run"), {"fontsize": 16, "primary_metric": "acc", "zip": True}
    )
    plot, npy, csv = composite.writers
    assert (plot.fontsize, plot.primary_metric, npy.zip) == (16, "acc", True)
    assert isinstance(csv, CSVWriter)
    assert "not used" not in caplog.text
    with caplog.at_level("WARNING", logger="delve"):
        build_writer(["csv"], str(tmp_path / "run"), {"primary_metrc": "acc"})
    assert "primary_metrc" in caplog.text


def test_keys_mixed_with_instances_and_a_registered_user_writer(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WRITERS", dict(registry.WRITERS))
    register_writer("listwriter-test", ListWriter)
    mine = ListWriter()
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to=["csv", mine, "listwriter-test"], modules=model)
    values = _epoch(model, tracker)
    values.update(_epoch(model, tracker))
    tracker.close()
    built = tracker.writer.writers[2]
    assert isinstance(built, ListWriter) and built.savepath == str(tmp_path / "run")
    for writer in (mine, built):
        assert {name for _, name, _ in writer.scalars} == {
            "train-saturation_0",
            "train-saturation_2",
            "eval-saturation_0",
            "eval-saturation_2",
        }
        assert sorted({epoch for epoch, _, _ in writer.scalars}) == [0, 1]
        assert writer.saves == 3  # two epochs, and close() saves by default
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert frame.loc[1, "train-saturation_0"] == pytest.approx(values["train-saturation_0"])


# ------------------------------------------------------------------- failures
@pytest.mark.parametrize("fail_in", ["add_scalar", "save"])
def test_a_failing_writer_does_not_lose_the_other_writers_data(tmp_path, fail_in):
    good = ListWriter()
    model = _model()
    tracker = SaturationTracker(
        str(tmp_path / "run"), save_to=[FailingWriter(fail_in), "csv", "npy", good], modules=model
    )
    with pytest.raises(WriterError, match=f"FailingWriter.{fail_in}: RuntimeError: boom in {fail_in}"):
        _epoch(model, tracker)
    # Every value of the epoch still reached the CSV, the NPY files and the other writer.
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert list(frame.index) == [0]
    assert set(frame.columns) == {"train-saturation_0", "train-saturation_2", "eval-saturation_0", "eval-saturation_2"}
    for column in frame.columns:
        saved = np.load(tmp_path / "run" / "npy" / column / "epoch_00000.npy", allow_pickle=False)
        assert float(saved) == frame.loc[0, column]
    assert len(good.scalars) == 4 and good.saves == 1
    # The tracker moves on to the next epoch.
    with pytest.raises(WriterError):
        _epoch(model, tracker)
    assert list(pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).index) == [0, 1]


def test_io_failure_names_the_file(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the run folder should be")
    csv = CSVWriter(str(tmp_path / "fine"))
    npy = NPYWriter(str(blocker))
    composite = CompositeWriter([npy, csv])
    composite.add_scalar("train-saturation_fc", 0.5, 0)
    with pytest.raises(WriterError) as caught:
        composite.save()
    message = str(caught.value)
    assert "NPYWriter could not write" in message
    assert str(blocker / "npy" / "train-saturation_fc" / "epoch_00000.npy") in message
    # The CSV writer after the failing one still wrote its file.
    assert pd.read_csv(tmp_path / "fine.csv", sep=";", index_col=0).loc[0, "train-saturation_fc"] == 0.5


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_permission_denied_names_the_file(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        writer = CSVWriter(str(locked / "run"))
        writer.add_scalar("a", 1.0, 0)
        with pytest.raises(WriterError, match=f"CSVWriter could not write {locked / 'run.csv'}: Permission denied"):
            writer.save()
    finally:
        locked.chmod(0o700)


def test_nosave_writes_nothing(tmp_path):
    model = _model()
    tracker = SaturationTracker(
        str(tmp_path / "run"),
        save_to=["csv", "npy", "print", "tensorboard", "plot"],
        modules=model,
        stats=["lsat", "cov"],
        nosave=True,
    )
    values = _epoch(model, tracker)
    tracker.add_scalar("acc", 0.5)
    tracker.close()
    assert 0 < values["train-saturation_0"] <= 1
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ NPY
def test_npy_files_scalars_and_covariance_load_without_pickle(tmp_path, ref):
    model = nn.Sequential(nn.Linear(6, 4))
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="npy", modules=model, stats=["lsat", "cov", "det"])
    inputs = [torch.randn(30, 6) for _ in range(2)]
    logged = []
    for batch in inputs:
        model.train()
        model(batch)
        tracker.add_scalar("loss", float(batch.sum()))
        logged.append(tracker.add_saturations())
    tracker.close()
    root = tmp_path / "run" / "npy"
    for epoch, batch in enumerate(inputs):
        with torch.no_grad():
            rows = model(batch).numpy()
        cov = np.load(root / "train-covariance-matrix_0" / f"epoch_{epoch:05d}.npy", allow_pickle=False)
        assert cov.shape == (4, 4) and cov.dtype == np.float64
        np.testing.assert_allclose(cov, ref.cov(rows), rtol=1e-9, atol=1e-12)
        sat = np.load(root / "train-saturation_0" / f"epoch_{epoch:05d}.npy", allow_pickle=False)
        assert sat.shape == () and float(sat) == ref.saturation(ref.cov(rows), 0.99)
        det = np.load(root / "train-covariance-log-determinant_0" / f"epoch_{epoch:05d}.npy", allow_pickle=False)
        assert float(det) == pytest.approx(ref.logdet(ref.cov(rows)), rel=1e-9)
        loss = np.load(root / "loss" / f"epoch_{epoch:05d}.npy", allow_pickle=False)
        assert float(loss) == pytest.approx(float(batch.sum()))
    counters = json.loads((root / "counters.json").read_text())
    assert counters["values"]["train-covariance-matrix_0"] == {"name": "train-covariance-matrix_0", "epochs": [0, 1]}
    assert counters["values"]["loss"]["epochs"] == [0, 1]
    assert not list(root.rglob(".*"))  # no temporary files left


def test_npy_unsafe_names_stay_inside_the_folder_and_do_not_collide(tmp_path):
    writer = NPYWriter(str(tmp_path / "run"))
    writer.add_scalar("../escape", 1.0, 0)
    writer.add_scalar("a/b", 2.0, 0)
    writer.add_scalar("a_b", 3.0, 0)
    writer.close()
    root = tmp_path / "run" / "npy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    counters = json.loads((root / "counters.json").read_text())["values"]
    by_name = {entry["name"]: folder for folder, entry in counters.items()}
    assert set(by_name) == {"../escape", "a/b", "a_b"}
    assert len(set(by_name.values())) == 3
    for name, value in (("../escape", 1.0), ("a/b", 2.0), ("a_b", 3.0)):
        path = root / by_name[name] / "epoch_00000.npy"
        assert path.resolve().is_relative_to(root.resolve())
        assert float(np.load(path, allow_pickle=False)) == value


def test_npy_rejects_object_arrays(tmp_path):
    writer = NPYWriter(str(tmp_path / "run"))
    with pytest.raises(ValueError, match="numeric"):
        writer.add_array("x", np.array([{"a": 1}], dtype=object), 0)


def test_npy_zip_holds_exactly_the_run_folder(tmp_path):
    (tmp_path / "neighbour.txt").write_text("not part of the run")
    writer = NPYWriter(str(tmp_path / "run"), zip=True)
    writer.add_scalar("train-saturation_fc", 0.25, 0)
    writer.add_array("train-covariance-matrix_fc", np.eye(2), 0)
    writer.save()
    writer.add_scalar("train-saturation_fc", 0.5, 1)
    writer.close()
    on_disk = {
        str(p.relative_to(tmp_path / "run")).replace(os.sep, "/")
        for p in (tmp_path / "run" / "npy").rglob("*")
        if p.is_file()
    }
    with zipfile.ZipFile(tmp_path / "run" / "npy.zip") as archive:
        names = set(archive.namelist())
        assert names == on_disk
        assert names == {
            "npy/counters.json",
            "npy/train-saturation_fc/epoch_00000.npy",
            "npy/train-saturation_fc/epoch_00001.npy",
            "npy/train-covariance-matrix_fc/epoch_00000.npy",
        }
        loaded = np.load(io.BytesIO(archive.read("npy/train-covariance-matrix_fc/epoch_00000.npy")), allow_pickle=False)
    np.testing.assert_array_equal(loaded, np.eye(2))


# -------------------------------------------------------------------- console
def test_print_writer_prints_a_table_per_epoch_through_tqdm(tmp_path, capsys):
    model = _model()
    tracker = SaturationTracker(str(tmp_path / "run"), save_to="print", modules=model, stats=["lsat", "idim"])
    tracker.add_scalar("test_accuracy", 0.75)
    values = _epoch(model, tracker)
    tracker.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "epoch 0"
    assert out[1].split() == ["layer", "train", "lsat", "train", "idim", "eval", "lsat", "eval", "idim"]
    # Layers named with their class and shape, as _model() defines them; then the four values.
    rows = {line.rsplit(None, 4)[0]: line.split()[-4:] for line in out[2:4]}
    assert set(rows) == {"0 (Linear 6->5)", "2 (Linear 5->3)"}
    rows = {label.split()[0]: values for label, values in rows.items()}
    assert float(rows["0"][0]) == pytest.approx(values["train-saturation_0"], abs=5e-4)
    assert int(rows["2"][1]) == values["train-intrinsic-dimensionality_2"]
    assert out[4] == "test_accuracy = 0.75"
    assert list(tmp_path.iterdir()) == []  # printing writes no file


def test_print_writer_keeps_a_tqdm_bar_intact(capsys):
    from tqdm import tqdm

    stream = io.StringIO()
    writer = PrintWriter(file=stream)
    with tqdm(total=2, file=stream) as bar:
        writer.add_scalar("train-saturation_fc", 0.5, 0)
        writer.save()
        bar.update(1)
    text = stream.getvalue()
    assert "train lsat" in text and "epoch 0" in text
    # tqdm.write clears the bar line first, so the table starts on its own line.
    assert "\nepoch 0\n" in text.replace("\r", "\n")
