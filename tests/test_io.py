"""Atomic writes: content, permissions and clean-up, checked with the standard library."""

from __future__ import annotations

import os
import stat

import pytest

from delve.io import atomic_write


def test_atomic_write_gives_the_umask_permissions_of_a_plain_open(tmp_path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write(atomic, lambda handle: handle.write("x"))
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "run.csv"
    atomic_write(target, lambda handle: handle.write("old"))

    def fail(handle) -> None:
        handle.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.csv"]
