"""Names of layers and logged values, and their safe use as file names.

A logged value is named ``<mode>-<statistic>_<layer>``, for example
``train-saturation_features-0``. Modes and statistic names never contain
``_``, so the first ``_`` separates the layer, which may contain anything.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MODES", "layer_name", "value_name", "parse_value_name", "ValueName", "safe_filename"]

MODES = ("train", "eval")


def layer_name(qualified_name: str) -> str:
    """The tracker's name for a submodule: its qualified name with ``.`` -> ``-``.

    Examples
    --------
    >>> layer_name("features.0")
    'features-0'
    """
    return qualified_name.replace(".", "-")


def value_name(mode: str, statistic: str, layer: str) -> str:
    """Compose a logged value's name.

    Examples
    --------
    >>> value_name("train", "saturation", "features-0")
    'train-saturation_features-0'
    """
    return f"{mode}-{statistic}_{layer}"


class ValueName(NamedTuple):
    """The parts of a logged value's name."""

    mode: str
    statistic: str
    layer: str


def parse_value_name(name: str) -> ValueName | None:
    """Split ``<mode>-<statistic>_<layer>``; ``None`` for any other name (user scalars).

    Examples
    --------
    >>> parse_value_name("eval-intrinsic-dimensionality_fc_1")
    ValueName(mode='eval', statistic='intrinsic-dimensionality', layer='fc_1')
    >>> parse_value_name("test_accuracy") is None
    True
    """
    mode, sep, rest = name.partition("-")
    if not sep or mode not in MODES:
        return None
    statistic, sep, layer = rest.partition("_")
    if not sep or not statistic or not layer:
        return None
    return ValueName(mode, statistic, layer)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def safe_filename(name: str) -> str:
    """A file name derived from ``name`` that cannot leave its folder.

    Path separators and other unusual characters become ``_``; names made only
    of dots are prefixed, so ``..`` cannot climb out of a run folder.

    Examples
    --------
    >>> safe_filename("../x")
    '.._x'
    >>> safe_filename("..")
    '_..'
    """
    cleaned = _UNSAFE.sub("_", name) or "_"
    if set(cleaned) == {"."}:
        cleaned = "_" + cleaned
    return cleaned
