"""Names of layers and logged values, how to read them back, and their safe use as file names.

A logged value is named ``<mode>-<statistic>_<layer>``, for example
``train-saturation_features-0``. Modes and statistic names never contain
``_``, so the first ``_`` separates the layer, which may contain anything.
Values over all layers of a mode are named ``<mode>-<statistic>``, for
example ``train-average-saturation``.

User scalars share the namespace: ``tracker.add_scalar("eval-acc_top1", 0.9)``
fits the grammar by accident. So a tracker describes what it logs in a
:class:`RunRecord` (its layers and statistic names), and a name is read as a
per-layer value only when the record knows both its statistic and its layer.
Without a record (files written by delve 0.1.x) the grammar alone decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "MODES",
    "layer_name",
    "value_name",
    "mode_value_name",
    "parse_value_name",
    "ValueName",
    "RunRecord",
    "classify",
    "compose_name",
    "safe_filename",
]

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


def mode_value_name(mode: str, statistic: str) -> str:
    """Name of a value over all layers of a mode.

    Examples
    --------
    >>> mode_value_name("eval", "average-saturation")
    'eval-average-saturation'
    """
    return f"{mode}-{statistic}"


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


@dataclass(frozen=True)
class RunRecord:
    """What a tracker logs: its layers, per-layer statistic names and per-mode statistic names.

    Writers receive it from the tracker (:meth:`AbstractWriter.record_run`)
    and keep it beside the files they write, so that a run read back tells
    the tracker's values from the user's scalars. It also says what each
    layer is: its module's class and shape (``descriptions``, known when the
    tracker is built) and its width ``d`` (``widths``, known from the
    layer's first recorded forward pass), so figures and tables of a run
    read back show them. ``facts`` holds what the findings of a report need
    beyond the values (:mod:`delve.verdicts.facts`): per layer its rank bound
    and, for a convolution, its receptive field against the input, in plain
    JSON types.

    Examples
    --------
    >>> record = RunRecord(layers=("fc",), statistics=("saturation",), mode_statistics=("average-saturation",))
    >>> record.classify("train-saturation_fc"), record.classify("eval-acc_top1")
    (('train', 'fc', 'saturation'), (None, None, 'eval-acc_top1'))
    >>> record.classify("eval-average-saturation")
    ('eval', None, 'average-saturation')
    >>> RunRecord(("2",), ("saturation",), descriptions={"2": "Linear 256->256"}).label("2")
    '2 (Linear 256->256)'
    """

    layers: tuple[str, ...]
    statistics: tuple[str, ...]
    mode_statistics: tuple[str, ...] = ()
    #: Layer -> its width ``d`` (the features of its observation rows).
    widths: Mapping[str, int] = field(default_factory=dict, hash=False)
    #: Layer -> its module's class and shape, e.g. ``"Linear 256->256"``.
    descriptions: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Layer -> ``{"bound": ..., "rf_min": ..., "beyond_input": ..., ...}`` (see :mod:`delve.verdicts.facts`).
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    def classify(self, name: str) -> tuple[str | None, str | None, str]:
        """``(mode, layer, statistic)`` of a value this record describes, else ``(None, None, name)``."""
        parsed = parse_value_name(name)
        if parsed is not None and parsed.statistic in self.statistics and parsed.layer in self.layers:
            return parsed.mode, parsed.layer, parsed.statistic
        mode, sep, rest = name.partition("-")
        if sep and mode in MODES and rest in self.mode_statistics:
            return mode, None, rest
        return None, None, name

    def label(self, layer: str) -> str:
        """How figures and tables name a layer: ``2 (Linear 256->256)``, or the name alone."""
        description = self.descriptions.get(layer)
        return f"{layer} ({description})" if description else layer

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts, for a JSON file."""
        return {
            "layers": list(self.layers),
            "statistics": list(self.statistics),
            "mode_statistics": list(self.mode_statistics),
            "widths": dict(self.widths),
            "descriptions": dict(self.descriptions),
            "facts": {layer: dict(entry) for layer, entry in self.facts.items()},
        }

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict` (records without widths, descriptions or facts too); ``ValueError`` otherwise."""
        try:
            return cls(
                layers=_strings(content["layers"]),
                statistics=_strings(content["statistics"]),
                mode_statistics=_strings(content.get("mode_statistics", ())),
                widths={str(layer): int(d) for layer, d in dict(content.get("widths", {})).items()},
                descriptions={str(layer): str(text) for layer, text in dict(content.get("descriptions", {})).items()},
                facts={str(layer): _plain(dict(entry)) for layer, entry in dict(content.get("facts", {})).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"not a run record: {error!r}") from error


def _plain(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A layer's facts as written, with JSON's lists back as tuples (a 2-D field is a tuple)."""
    return {str(key): tuple(value) if isinstance(value, list) else value for key, value in entry.items()}


def _strings(values: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError("expected a list of names, got a string")
    return tuple(str(value) for value in values)


def classify(name: str, record: RunRecord | None = None) -> tuple[str | None, str | None, str]:
    """Split a logged value's name into ``(mode, layer, statistic)``.

    With a ``record`` only the values it describes are split; without one (a
    run of delve 0.1.x) the grammar decides. User scalars come back as
    ``(None, None, name)``.

    Examples
    --------
    >>> classify("train-saturation_features-0")
    ('train', 'features-0', 'saturation')
    >>> classify("eval-average-saturation")
    ('eval', None, 'average-saturation')
    >>> classify("test_accuracy")
    (None, None, 'test_accuracy')
    """
    if record is not None:
        return record.classify(name)
    parsed = parse_value_name(name)
    if parsed is not None:
        return parsed.mode, parsed.layer, parsed.statistic
    mode, sep, rest = name.partition("-")
    if sep and mode in MODES and rest.startswith("average-"):
        return mode, None, rest
    return None, None, name


def compose_name(mode: str | None, layer: str | None, statistic: str) -> str:
    """Inverse of :func:`classify`.

    Examples
    --------
    >>> compose_name("train", "fc", "saturation"), compose_name("eval", None, "average-saturation")
    ('train-saturation_fc', 'eval-average-saturation')
    """
    if layer is not None:
        return value_name(str(mode), statistic, layer)
    if mode is not None:
        return mode_value_name(mode, statistic)
    return statistic


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
