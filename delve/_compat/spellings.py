"""The spellings of delve 0.1.x that current code translates where it meets them.

* ``CheckLayerSat``: :func:`deprecated_alias` of ``SaturationTracker``, warns when built;
* ``writer_args`` as the fourth positional argument of the tracker:
  :func:`split_positional_writer_args`;
* ``stats=["lsat_eval", ...]``: :func:`strip_mode_suffix`.

This module depends on nothing else in delve, so every stage may use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "deprecated_alias",
    "split_positional_writer_args",
    "strip_mode_suffix",
]

T = TypeVar("T", bound=type)

_MODE_SUFFIX = "_eval"


def deprecated_alias(cls: T, old_name: str) -> T:
    """A subclass of ``cls`` named ``old_name`` that warns (``DeprecationWarning``) when built.

    Examples
    --------
    >>> class New:
    ...     pass
    >>> Old = deprecated_alias(New, "Old")
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = Old()
    >>> str(caught[0].message)
    'Old is deprecated; use New (same arguments)'
    """

    def warn_then_init(self: Any, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            f"{old_name} is deprecated; use {cls.__name__} (same arguments)", DeprecationWarning, stacklevel=2
        )
        cls.__init__(self, *args, **kwargs)

    namespace = {
        "__init__": warn_then_init,
        "__doc__": f"Deprecated name of :class:`{cls.__name__}`.",
        "__module__": cls.__module__,
    }
    return type(old_name, (cls,), namespace)  # type: ignore[return-value]


def split_positional_writer_args(layer_filter: Any, writer_args: Any) -> tuple[Any, Any]:
    """``(layer_filter, writer_args)``: 0.1.x took ``writer_args`` as the fourth positional argument.

    A mapping in ``layer_filter``'s place (with no ``writer_args``) is the
    writers' arguments of a 0.1.x call.

    Examples
    --------
    >>> split_positional_writer_args({"fontsize": 16}, None)
    (None, {'fontsize': 16})
    >>> split_positional_writer_args("features.*", None)
    ('features.*', None)
    """
    if isinstance(layer_filter, Mapping) and writer_args is None:
        return None, layer_filter
    return layer_filter, writer_args


def strip_mode_suffix(key: str) -> str:
    """A statistic key without 0.1.x's ``_eval`` suffix (both modes are always recorded now).

    Examples
    --------
    >>> strip_mode_suffix("lsat_eval"), strip_mode_suffix("idim")
    ('lsat', 'idim')
    """
    return key[: -len(_MODE_SUFFIX)] if key.endswith(_MODE_SUFFIX) else key
