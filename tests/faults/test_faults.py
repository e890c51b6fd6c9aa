"""Writers under faults: clear errors naming the file, nothing lost elsewhere, atomic files after SIGKILL."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import delve.common.files
from delve import SaturationTracker
from delve.writers import WRITERS, AbstractWriter, WriterError

ATOMIC_KEYS = [key for key in ("csv", "npy") if key in WRITERS]


class MemoryWriter(AbstractWriter):
    """Keeps everything in memory; the reference of 'nothing lost'."""

    def __init__(self) -> None:
        super().__init__("")
        self.scalars: dict[tuple[int, str], float] = {}
        self.saves = 0

    def add_scalar(self, name, value, epoch=None, **kwargs) -> None:
        self.scalars[(epoch, name)] = value

    def save(self) -> None:
        self.saves += 1


class BrokenWriter(AbstractWriter):
    """A user writer whose disk is full."""

    def add_scalar(self, name, value, epoch=None, **kwargs) -> None:
        pass

    def save(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/mnt/full/values.bin")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def one_epoch(net: nn.Module, tracker: SaturationTracker, loss: float) -> None:
    net(torch.randn(20, 6))
    tracker.add_scalar("loss", loss)


def test_target_that_cannot_be_written_is_named_and_others_keep_their_data(tmp_path) -> None:
    savefile = tmp_path / "run"
    (tmp_path / "run.csv").mkdir()  # the CSV's place is taken: every save fails
    memory = MemoryWriter()
    net = model()
    tracker = SaturationTracker(
        str(savefile), modules=net, save_to=["csv", memory, *ATOMIC_KEYS[1:]], stats=["lsat", "cov"]
    )
    one_epoch(net, tracker, 0.5)
    with pytest.raises(WriterError) as info:
        tracker.add_saturations()
    message = str(info.value)
    assert "CSVWriter" in message and str(tmp_path / "run.csv") in message
    assert "directory" in message.lower()
    # The epoch went on and the other writers have all of it.
    assert tracker.epoch == 1
    assert memory.saves == 1
    assert memory.scalars[(0, "loss")] == 0.5
    assert (0, "train-saturation_0") in memory.scalars
    if "npy" in ATOMIC_KEYS:
        folder = savefile / "npy" / "train-saturation_0"
        assert (
            float(np.load(folder / "epoch_00000.npy", allow_pickle=False)) == memory.scalars[(0, "train-saturation_0")]
        )
        assert np.load(
            savefile / "npy" / "train-covariance-matrix_2" / "epoch_00000.npy", allow_pickle=False
        ).shape == (3, 3)

    # Once the disk is fixed, the CSV catches up with every epoch it missed.
    (tmp_path / "run.csv").rmdir()
    one_epoch(net, tracker, 0.25)
    tracker.add_saturations()
    tracker.close()
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert frame.index.tolist() == [0, 1]
    assert frame["loss"].tolist() == [0.5, 0.25]


def test_disk_full_during_an_atomic_write_names_the_file(tmp_path, monkeypatch) -> None:
    """ENOSPC at fsync (where a full disk shows up) for the CSV only."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".run.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(delve.common.files.os, "fsync", fsync)
    memory = MemoryWriter()
    net = model()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=net, save_to=[*ATOMIC_KEYS, memory])
    one_epoch(net, tracker, 1.0)
    with pytest.raises(WriterError, match="No space left on device") as info:
        tracker.add_saturations()
    assert str(tmp_path / "run.csv") in str(info.value)
    assert not (tmp_path / "run.csv").exists()  # no partial file in its place
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary was cleaned up
    assert memory.saves == 1
    if "npy" in ATOMIC_KEYS:
        assert (tmp_path / "run" / "npy" / "train-saturation_0" / "epoch_00000.npy").is_file()
    monkeypatch.undo()
    tracker.close()


def test_user_writer_failure_is_reported_with_its_file_and_others_save(tmp_path) -> None:
    memory = MemoryWriter()
    net = model()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=net, save_to=[BrokenWriter(), "csv", memory])
    one_epoch(net, tracker, 2.0)
    with pytest.raises(WriterError) as info:
        tracker.add_saturations()
    assert "BrokenWriter" in str(info.value) and "/mnt/full/values.bin" in str(info.value)
    assert pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0).loc[0, "loss"] == 2.0
    assert memory.saves == 1


# ---------------------------------------------------------------- SIGKILL mid-run
CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from torch import nn
    from delve import SaturationTracker
    import delve.common.files

    savefile, keys, pause_at = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    state = {"epoch": 0}
    real_fsync = os.fsync

    def fsync(fd):
        # Announce the write in progress and hang there, so the parent kills us mid-write.
        if pause_at >= 0 and state["epoch"] >= pause_at:
            print("WRITING", os.readlink(f"/proc/self/fd/{fd}"), flush=True)
            time.sleep(600)
        real_fsync(fd)

    delve.common.files.os.fsync = fsync
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(24, 96), nn.ReLU(), nn.Linear(96, 64))
    tracker = SaturationTracker(savefile, save_to=keys, modules=net, stats=["lsat", "idim", "cov", "trc"])
    while True:
        net(torch.randn(128, 24))
        tracker.add_scalars("user-", {f"s{i}": float(i * state["epoch"]) for i in range(100)})
        tracker.add_saturations()
        print("EPOCH", state["epoch"], flush=True)
        state["epoch"] += 1
    """
)


def _start_child(tmp_path: Path, name: str, pause_at: int) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    savefile = tmp_path / name / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(delve.common.files.__file__).parents[2]), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, str(script), str(savefile), ",".join(ATOMIC_KEYS), str(pause_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    return child, savefile


def _kill_after(child: subprocess.Popen, marker: str, count: int) -> list[str]:
    # No deadline: a slow machine only makes the child slower, and the child
    # prints a line every epoch or exits (readline then returns ""), so the
    # loop ends either way. A deadline here failed loaded machines only.
    lines: list[str] = []
    try:
        while sum(line.startswith(marker) for line in lines) < count:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"child exited early with {child.poll()}; output: {lines[-5:]}")
            lines.append(line.strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return lines


def _check_every_file(savefile: Path, epochs_done: int) -> None:
    """Every file of the run reads back completely; only hidden temporaries may be torn."""
    files = [savefile.with_suffix(".csv"), *sorted(p for p in savefile.rglob("*") if p.is_file())]
    checked = 0
    for path in files:
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # an interrupted write's temporary: never read by delve
        if path.suffix == ".csv":
            frame = pd.read_csv(path, sep=";", index_col=0)
            assert frame.index.tolist() == list(range(len(frame)))
            assert len(frame) >= epochs_done
            complete = frame[["train-saturation_0", "train-saturation_2", "user-s99"]]
            assert not complete.isna().any().any()
            assert frame["user-s99"].tolist() == [99.0 * epoch for epoch in frame.index]
        elif path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if "covariance-matrix_0" in path.parent.name:
                assert array.shape == (96, 96) and np.isfinite(array).all()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            continue
        checked += 1
    assert checked >= 1 + (epochs_done * 4 if "npy" in ATOMIC_KEYS else 0)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or os.name != "posix", reason="needs POSIX signals and /proc")
def test_sigkill_in_the_middle_of_a_write_leaves_every_file_readable(tmp_path) -> None:
    # One child is killed while it hangs inside an atomic write, one at an arbitrary moment.
    paused, paused_file = _start_child(tmp_path, "paused", pause_at=3)
    running, running_file = _start_child(tmp_path, "running", pause_at=-1)
    lines = _kill_after(paused, "WRITING", 1)
    assert lines[-1].split()[1].endswith(".tmp")  # it was writing a temporary, not the file itself
    _check_every_file(paused_file, epochs_done=3)
    lines = _kill_after(running, "EPOCH", 6)
    _check_every_file(running_file, epochs_done=6)
