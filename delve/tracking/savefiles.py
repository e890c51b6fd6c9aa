"""One writer per savefile: the savefiles open trackers write under, and runs already on disk.

Two trackers writing under the same ``savefile`` would each rewrite the CSV
from their own rows, so the second one to save silently erases the first's.
A tracker therefore claims its savefile while it is open (:func:`claim`),
and a run already on disk is only continued when the user says so
(``append=True``, ``initial_epoch``, or a checkpoint loaded with
:meth:`~delve.SaturationTracker.load_state_dict`); otherwise the tracker
refuses to write over it (:func:`refuse_existing`).
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from ..output.formats.csv import read_csv
from ..output.layout import csv_path

__all__ = ["SavefileGuard", "claim", "release", "last_epoch", "refuse_existing"]

# Savefile (absolute, without ".csv") -> the open tracker writing under it. Weak: a tracker
# the user drops is collected (its hooks hold it weakly) and gives its savefile back.
_claims: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _key(savefile: str) -> str:
    return os.path.abspath(str(csv_path(savefile))[: -len(".csv")])


def claim(owner: Any, savefile: str) -> None:
    """Record that ``owner`` writes under ``savefile``; ``ValueError`` if another open tracker does.

    Examples
    --------
    >>> class Owner:
    ...     pass
    >>> first, second = Owner(), Owner()
    >>> claim(first, "runs/doc-claim")
    >>> claim(second, "runs/doc-claim")
    Traceback (most recent call last):
    ...
    ValueError: another open SaturationTracker already writes under savefile 'runs/doc-claim' ...
    >>> release(first, "runs/doc-claim")
    >>> claim(second, "runs/doc-claim")
    >>> release(second, "runs/doc-claim")
    """
    key = _key(savefile)
    with _lock:
        holder = _claims.get(key)
    if holder is not None and holder is not owner:
        # A dropped tracker caught in a reference cycle is only collected by the cycle collector.
        del holder
        gc.collect()
    with _lock:
        holder = _claims.get(key)
        if holder is not None and holder is not owner:
            raise ValueError(
                f"another open SaturationTracker already writes under savefile {savefile!r} "
                "(both would rewrite the same CSV, and the last to save would erase the other's rows): "
                "close() it first, or give this tracker another savefile"
            )
        _claims[key] = owner


def release(owner: Any, savefile: str) -> None:
    """Give ``savefile`` back (a closed tracker); nothing happens when ``owner`` does not hold it."""
    key = _key(savefile)
    with _lock:
        if _claims.get(key) is owner:
            del _claims[key]


def last_epoch(savefile: str) -> int | None:
    """The last epoch of the run written under ``savefile``; ``None`` when it has no CSV.

    Raises
    ------
    ValueError
        When the CSV exists but is not a delve CSV.
    """
    if not csv_path(savefile).is_file():
        return None
    return int(read_csv(savefile).index.max())


def refuse_existing(savefile: str) -> None:
    """Raise ``FileExistsError`` when a run is already written under ``savefile``.

    Called before a tracker writes its first value, unless it continues
    that run; the message says how to continue it or start afresh.

    Examples
    --------
    >>> import os, tempfile
    >>> savefile = os.path.join(tempfile.mkdtemp(), "run")
    >>> refuse_existing(savefile)  # nothing there yet
    """
    try:
        last = last_epoch(savefile)
    except ValueError:
        last = -1  # a CSV that is not delve's is not to be overwritten either
    if last is None:
        return
    held = f"epochs 0-{last}" if last >= 0 else "a file that is not a delve CSV"
    raise FileExistsError(
        f"{csv_path(savefile)} already holds {held} of an earlier run, and this tracker would write over it. "
        f"Pass append=True to continue that run (epochs from {last + 1}), initial_epoch=k to resume it at "
        "epoch k, or choose another savefile (or delete the earlier run's files) to start afresh"
    )


class SavefileGuard:
    """A tracker's hold on its ``savefile``: claimed while open; an earlier run there continued or refused.

    Only writers that derive their files from the tracker's ``savefile``
    (:attr:`~delve.writers.AbstractWriter.writes_files`) are guarded; a
    tracker with none (``nosave=True``, a console writer, a rank that does
    not write) guards nothing.

    Parameters
    ----------
    owner : object
        The tracker.
    savefile : str
        Its ``savefile``.
    writers : list of AbstractWriter
        Its writers.
    resumed : bool
        Whether it continues a run (``initial_epoch > 0``).
    """

    def __init__(self, owner: Any, savefile: str, writers: Iterable[Any], resumed: bool) -> None:
        self.savefile = savefile
        self.active = any(writer.writes_files and writer.savepath == savefile for writer in writers)
        self.continues = resumed
        if self.active:
            claim(owner, savefile)

    def append(self) -> int | None:
        """The epoch after the last one written under the savefile; ``None`` when nothing is there."""
        self.continues = True
        last = last_epoch(self.savefile) if self.active else None
        return None if last is None else last + 1

    def before_writing(self) -> None:
        """Refuse to write over an earlier run unless this tracker continues it (checked once)."""
        if self.active and not self.continues:
            refuse_existing(self.savefile)
            self.continues = True  # the files under the savefile are this run's from here on

    def release(self, owner: Any) -> None:
        """Give the savefile back (the tracker is closed)."""
        if self.active:
            release(owner, self.savefile)
