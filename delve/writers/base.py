"""The writer interface and the composite that fans values out to many writers.

A tracker talks to its writers through four calls per epoch: ``add_scalar`` for
every scalar value (statistics and user scalars alike), ``add_array`` for array
statistics (``cov``, ``embed``), ``save`` once the epoch is complete, and
``close`` at the end. ``resume_from_saved_state`` is called once, before any
value, when a run continues from ``initial_epoch > 0``. ``record_run`` hands
over the :class:`~delve.common.naming.RunRecord` of the tracker (its layers and
statistic names, and the layers' widths once they are known): a writer reads
a name as a per-layer value only when the record describes it (see
:func:`delve.common.naming.classify`), so user scalars that happen to look
like ``<mode>-<stat>_<layer>`` stay user scalars.

Writers create nothing on disk before their first ``save``, so a tracker that
is built and dropped, or one with ``nosave=True``, leaves no files behind.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..common.naming import RunRecord

__all__ = ["AbstractWriter", "CompositeWriter", "CompositWriter", "WriterError", "writing"]

logger = logging.getLogger("delve")


class WriterError(RuntimeError):
    """One or more writers failed; the message names each writer, and the file for I/O failures."""


@contextmanager
def writing(writer: object, path: object) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a :class:`WriterError` naming it.

    The temporary file of an atomic write has a random name; the user needs the
    name of the file that could not be written, and why.

    Examples
    --------
    >>> try:
    ...     with writing("CSVWriter", "runs/a.csv"):
    ...         raise PermissionError(13, "Permission denied")
    ... except WriterError as error:
    ...     print(error)
    CSVWriter could not write runs/a.csv: Permission denied
    """
    try:
        yield
    except OSError as error:
        name = writer if isinstance(writer, str) else type(writer).__name__
        reason = error.strerror or str(error) or type(error).__name__
        raise WriterError(f"{name} could not write {path}: {reason}") from error


class AbstractWriter(ABC):
    """Base class of every writer.

    Subclasses implement :meth:`add_scalar` and :meth:`save`; the rest has
    working defaults. Writers built from a ``save_to`` key are constructed as
    ``WriterClass(savepath, **writer_args)``, and ``writer_args`` is shared by
    every writer of the tracker, so a writer should accept (and ignore)
    keyword arguments meant for others.

    Parameters
    ----------
    savepath : str
        The run's path prefix (the tracker's ``savefile``); a writer derives
        its files from it, e.g. ``<savepath>.csv``.

    Examples
    --------
    >>> class ListWriter(AbstractWriter):
    ...     def __init__(self, savepath="", **kwargs):
    ...         super().__init__(savepath)
    ...         self.seen = []
    ...     def add_scalar(self, name, value, epoch=None, **kwargs):
    ...         self.seen.append((epoch, name, value))
    ...     def save(self):
    ...         pass
    >>> writer = ListWriter()
    >>> writer.add_scalars("train-", {"loss": 0.5}, epoch=0)
    >>> writer.seen
    [(0, 'train-loss', 0.5)]
    """

    #: What the tracker logs, from :meth:`record_run`; ``None`` for a writer used on its own.
    run_record: RunRecord | None = None
    #: Whether it writes files derived from its ``savepath``: two open trackers may not share such a
    #: savepath, and a run already there is not written over unless continued (``append=True``).
    writes_files: bool = True

    def __init__(self, savepath: str = "", **kwargs: Any) -> None:
        self.savepath = str(savepath)

    def record_run(self, record: RunRecord) -> None:
        """Learn which names are the tracker's per-layer values.

        Called before any value, and again when the record grows: the layers'
        widths are known from their first recorded forward pass.
        """
        self.run_record = record

    @abstractmethod
    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        """Record one scalar for ``epoch``."""

    def add_scalars(
        self, prefix: str, value_dict: Mapping[str, float], epoch: int | None = None, **kwargs: Any
    ) -> None:
        """Record several scalars named ``prefix + key``."""
        for key, value in value_dict.items():
            self.add_scalar(f"{prefix}{key}", value, epoch, **kwargs)

    def add_array(self, name: str, value: np.ndarray, epoch: int | None = None) -> None:
        """Record an array value (``cov``, ``embed``); ignored by scalar-only writers."""
        return None

    @abstractmethod
    def save(self) -> None:
        """Persist everything recorded so far; called once per epoch."""

    def close(self) -> None:
        """Release files and handles. The default saves."""
        self.save()

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue a run that stopped before ``initial_epoch``.

        Writers that persist history keep what was written for epochs before
        ``initial_epoch`` and drop the rest.
        """
        return None


class CompositeWriter(AbstractWriter):
    """Forward every call to several writers.

    A writer that raises never stops the others: every writer gets every call.
    Failures in ``add_*`` calls are collected and reported by the next
    :meth:`save` or :meth:`close` (so one failing writer cannot cut an epoch
    short for the others); failures in ``save``, ``close`` and
    ``resume_from_saved_state`` are reported at once. Either way one
    :class:`WriterError` names each writer that failed.

    Examples
    --------
    >>> from delve.writers import CompositeWriter
    >>> CompositeWriter([]).writers
    []
    """

    def __init__(self, writers: Iterable[AbstractWriter], savepath: str = "", **kwargs: Any) -> None:
        super().__init__(savepath)
        self.writers = list(writers)
        # message -> number of times it happened since the last report
        self._pending: dict[str, int] = {}
        #: The epoch the writers last resumed from, and whether any epoch was written since.
        self.resumed_at: int | None = None
        self.wrote = False

    def _each(self, method: str, *args: Any, report: bool = True, **kwargs: Any) -> None:
        for writer in self.writers:
            try:
                getattr(writer, method)(*args, **kwargs)
            except Exception as error:
                if isinstance(error, WriterError):
                    message = str(error)
                else:
                    message = f"{type(writer).__name__}.{method}: {type(error).__name__}: {error}"
                if message not in self._pending:
                    logger.error("delve writer failed: %s", message)
                self._pending[message] = self._pending.get(message, 0) + 1
        if report:
            self._report()

    def _report(self) -> None:
        if not self._pending:
            return
        failures = [f"{message} ({count} times)" if count > 1 else message for message, count in self._pending.items()]
        self._pending = {}
        raise WriterError("; ".join(failures))

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        self._each("add_scalar", name, value, epoch, report=False, **kwargs)

    def add_scalars(
        self, prefix: str, value_dict: Mapping[str, float], epoch: int | None = None, **kwargs: Any
    ) -> None:
        self._each("add_scalars", prefix, value_dict, epoch, report=False, **kwargs)

    def add_array(self, name: str, value: np.ndarray, epoch: int | None = None) -> None:
        self._each("add_array", name, value, epoch, report=False)

    def save(self) -> None:
        self._each("save")

    def close(self) -> None:
        self._each("close")

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        self.resumed_at = int(initial_epoch)
        self._each("resume_from_saved_state", initial_epoch)

    def record_run(self, record: RunRecord) -> None:
        super().record_run(record)
        self._each("record_run", record)

    def write_epoch(self, values: Mapping[str, Any], epoch: int, save: bool = True) -> None:
        """Hand one epoch's values to every writer (arrays through ``add_array``), then save."""
        self.wrote = self.wrote or bool(values)
        for name, value in values.items():
            if isinstance(value, np.ndarray):
                self.add_array(name, value, epoch)
            else:
                self.add_scalar(name, value, epoch)
        if save:
            self.save()

    def forwarded(self, name: str, epoch: int) -> Callable[..., None] | None:
        """A call of ``name`` (``add_image``, ...) on every writer that has it, ``epoch`` as default.

        ``None`` when no writer has such a method.
        """
        writers = [writer for writer in self.writers if hasattr(writer, name)]
        if not writers:
            return None

        def forward(*args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("epoch", epoch)
            for writer in writers:
                getattr(writer, name)(*args, **kwargs)

        return forward


#: The 0.1.x spelling, kept so existing imports work.
CompositWriter = CompositeWriter
