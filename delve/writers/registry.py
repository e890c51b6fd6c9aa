"""``save_to`` keys and the writers they build."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .base import AbstractWriter, CompositeWriter
from .console import PrintWriter
from .csv import CSVWriter
from .npy import NPYWriter
from .plot import CSVandPlottingWriter
from .tensorboard import TensorBoardWriter

__all__ = ["WRITERS", "register_writer", "check_save_to", "build_writer"]

logger = logging.getLogger("delve")

WRITERS: dict[str, type[AbstractWriter]] = {}


def register_writer(key: str, writer_class: type[AbstractWriter], replace: bool = False) -> None:
    """Make ``save_to=key`` build ``writer_class(savepath, **writer_args)``.

    Keys are case-insensitive. A key that is already registered (built-ins
    included) is refused unless ``replace=True``.

    Examples
    --------
    >>> from delve.writers import CSVWriter
    >>> register_writer("mycsv", CSVWriter)
    >>> del WRITERS["mycsv"]  # keep the doctest from changing the global registry
    """
    if not (isinstance(writer_class, type) and issubclass(writer_class, AbstractWriter)):
        raise ValueError(f"writer_class must subclass AbstractWriter, got {writer_class!r}")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    existing = WRITERS.get(key.lower())
    if existing is not None and not replace:
        raise ValueError(
            f"save_to key {key!r} is already registered ({existing.__name__}); pass replace=True to replace it"
        )
    WRITERS[key.lower()] = writer_class


for _keys, _writer_class in (
    (("csv",), CSVWriter),
    (("npy",), NPYWriter),
    (("print", "console"), PrintWriter),
    (("tensorboard", "tb"), TensorBoardWriter),
    (("plot", "csvplot", "plotcsv", "csvplotting"), CSVandPlottingWriter),
):
    for _key in _keys:
        register_writer(_key, _writer_class)


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


def _named_parameters(writer_class: type) -> set[str] | None:
    """Keyword parameters a writer's constructor names; ``None`` if unknown."""
    names: set[str] = set()
    for cls in writer_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return names


def build_writer(save_to: Any, savepath: str, writer_args: Mapping[str, Any] | None = None) -> CompositeWriter:
    """One composite over every writer named or given in ``save_to``.

    ``writer_args`` go to every writer built from a key; writers ignore the
    arguments meant for others. An argument that none of them names is
    reported on the ``delve`` logger (a likely typo).
    """
    writers: list[AbstractWriter] = []
    args = dict(writer_args or {})
    known: set[str] = set()
    for entry in check_save_to(save_to):
        if isinstance(entry, AbstractWriter):
            writers.append(entry)
        else:
            writer_class = WRITERS[entry.lower()]
            names = _named_parameters(writer_class)
            known.update(names if names is not None else args)
            writers.append(writer_class(savepath, **args))
    unused = sorted(set(args) - known)
    if unused and len(writers) > 0 and known:
        logger.warning("writer_args %s are not used by any writer of this tracker", unused)
    return CompositeWriter(writers, savepath)
