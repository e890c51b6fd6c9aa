"""``save_to`` keys and the writers they build."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import AbstractWriter, CompositeWriter
from .csv import CSVWriter

__all__ = ["WRITERS", "register_writer", "check_save_to", "build_writer"]

WRITERS: dict[str, type[AbstractWriter]] = {}


def register_writer(key: str, writer_class: type[AbstractWriter]) -> None:
    """Make ``save_to=key`` build ``writer_class(savepath, **writer_args)``.

    Examples
    --------
    >>> from delve.writers import CSVWriter
    >>> register_writer("mycsv", CSVWriter)
    """
    if not (isinstance(writer_class, type) and issubclass(writer_class, AbstractWriter)):
        raise ValueError(f"writer_class must subclass AbstractWriter, got {writer_class!r}")
    WRITERS[key.lower()] = writer_class


register_writer("csv", CSVWriter)


def _entries(save_to: Any) -> list[Any]:
    if isinstance(save_to, (str, AbstractWriter)):
        return [save_to]
    if isinstance(save_to, Sequence):
        return list(save_to)
    raise ValueError(
        "save_to must be a key, a writer instance or a list of them; "
        f"got {type(save_to).__name__}. Accepted keys: {', '.join(sorted(WRITERS))}"
    )


def check_save_to(save_to: Any) -> list[Any]:
    """Validate ``save_to`` without creating anything; returns its entries."""
    entries = _entries(save_to)
    for entry in entries:
        if isinstance(entry, AbstractWriter):
            continue
        if not isinstance(entry, str) or entry.lower() not in WRITERS:
            raise ValueError(
                f"unknown save_to entry {entry!r}; accepted keys: {', '.join(sorted(WRITERS))}, "
                "or an AbstractWriter instance"
            )
    return entries


def build_writer(save_to: Any, savepath: str, writer_args: Mapping[str, Any] | None = None) -> CompositeWriter:
    """One composite over every writer named or given in ``save_to``."""
    writers: list[AbstractWriter] = []
    for entry in check_save_to(save_to):
        if isinstance(entry, AbstractWriter):
            writers.append(entry)
        else:
            writers.append(WRITERS[entry.lower()](savepath, **dict(writer_args or {})))
    return CompositeWriter(writers, savepath)
