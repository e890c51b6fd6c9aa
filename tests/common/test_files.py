"""Atomic writes: content, permissions and clean-up, checked with the standard library."""

from __future__ import annotations

import os
import stat

import pytest

from delve.common.files import atomic_write


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


def test_importing_and_writing_leave_the_umask_alone(monkeypatch, tmp_path) -> None:
    """Reading the umask means setting it: another thread could create a world-writable file meanwhile."""
    import importlib

    import delve.common.files

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", forbidden)
    importlib.reload(delve.common.files)
    delve.common.files.atomic_write(tmp_path / "a.txt", lambda handle: handle.write("x"))
    assert (tmp_path / "a.txt").read_text() == "x"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask(tmp_path, mask) -> None:
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        f"os.umask({mask})\n"
        "from delve.common.files import atomic_write\n"
        "atomic_write(sys.argv[1], lambda handle: handle.write('x'))\n"
    )
    target = tmp_path / "out.txt"
    subprocess.run([sys.executable, "-c", script, str(target)], check=True)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~mask
