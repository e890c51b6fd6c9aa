"""What a report needs to know of each layer besides its values, and the report of a run.

A layer's **facts** are read from the model, not from training: its rank
bound, and for a convolution its receptive field against the input
(:mod:`delve.verdicts.receptive_field`). A tracker writes them into its run
record (:class:`~delve.common.naming.RunRecord`, ``facts``) in plain JSON
types, so that ``delve report`` judges a run from its folder alone::

    {"bound": 32, "rf_min": [9, 9], "rf_max": [9, 9], "input_size": [8, 8], "beyond_input": true, "note": ""}

The **rank bound** is the most directions a layer's observed outputs can
span, whatever it learns: an affine map cannot produce more directions than
it reads. For ``nn.Linear`` (and any ``linear`` kind with a 2-D weight, such
as GPT-2's ``Conv1D``) it is ``min(d_in, d_out)``; for a convolution seen
channelwise (or averaged over positions), ``min(C_in prod(kernel), C_out)``:
a grouped convolution's weight is block diagonal, ``groups`` blocks of
``C_out/groups x C_in/groups prod(kernel)``, whose rank is at most
``groups min(C_out/groups, C_in/groups prod(kernel))``, the same number
(a depthwise 3x3 convolution of 64 channels can span all 64). A transposed
convolution gets the same bound, an upper one. Other layers (recurrent,
attention, a convolution flattened or max-pooled) have none: their width
bounds them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..capture.discovery import TrackedLayer
from ..common.naming import RunRecord
from .findings import LayerFacts, Thresholds, find

__all__ = ["FIELD_COLUMNS", "rank_bound", "layer_facts", "facts_of", "report_of"]

#: The receptive-field columns kept in a layer's facts.
FIELD_COLUMNS = ("rf_min", "rf_max", "input_size", "beyond_input", "note")
# Observations of a convolution that stay linear in its input patches: the rank bound holds for them.
_LINEAR_CONV_METHODS = ("channelwise", "mean")


def rank_bound(module: nn.Module, kind: str, conv_method: str = "channelwise") -> int | None:
    """The most directions the observed outputs of ``module`` can span, or ``None`` when it has no such bound.

    Parameters
    ----------
    module : nn.Module
        A tracked layer.
    kind : str
        Its observer's kind (``linear``, ``conv``, ``recurrent``, ``attention``...).
    conv_method : str
        How a convolution is observed (the tracker's ``conv_method``): the
        bound holds for ``channelwise`` and ``mean``.

    Examples
    --------
    >>> rank_bound(nn.Linear(256, 64), "linear"), rank_bound(nn.Conv2d(3, 32, 3), "conv")
    (64, 27)
    >>> rank_bound(nn.Conv2d(64, 64, 3, groups=64), "conv"), rank_bound(nn.Conv2d(3, 32, 3), "conv", "flatten")
    (64, None)
    """
    weight = getattr(module, "weight", None)
    if kind == "linear":
        return int(min(weight.shape)) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None
    if kind == "conv" and conv_method in _LINEAR_CONV_METHODS:
        kernel = getattr(module, "kernel_size", None)
        inputs, outputs = getattr(module, "in_channels", None), getattr(module, "out_channels", None)
        if isinstance(kernel, tuple) and isinstance(inputs, int) and isinstance(outputs, int):
            return int(min(inputs * math.prod(kernel), outputs))
    return None


def _plain(value: Any) -> Any:
    """A receptive-field cell in plain types (JSON's, a tuple for a list): ints, a bool, ``None`` for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, tuple):
        return tuple(int(side) for side in value)
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, str):
        return value
    return int(value)


def layer_facts(
    layers: Iterable[TrackedLayer], fields: pd.DataFrame | None = None, conv_method: str = "channelwise"
) -> dict[str, dict[str, Any]]:
    """Each layer's facts as the run record keeps them: its rank bound, and its receptive field where known.

    Parameters
    ----------
    layers : iterable of TrackedLayer
        The tracked layers.
    fields : pandas.DataFrame, optional
        :func:`~delve.verdicts.receptive_field`'s table for them (``None``:
        the input is not known yet).
    conv_method : str
        The tracker's ``conv_method``.

    Examples
    --------
    >>> from delve.capture.discovery import discover_layers
    >>> from delve.verdicts import receptive_field
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 10))
    >>> facts = layer_facts(discover_layers(model), receptive_field(model, (1, 1, 8, 8)))
    >>> facts["0"]["rf_min"], facts["0"]["beyond_input"], facts["2"]
    ((3, 3), False, {'bound': 10})
    """
    rows = {} if fields is None else {str(row["layer"]): row for _, row in fields.iterrows()}
    facts: dict[str, dict[str, Any]] = {}
    for layer in layers:
        entry: dict[str, Any] = {"bound": rank_bound(layer.module, layer.kind, conv_method)}
        if layer.name in rows:
            entry.update({column: _plain(rows[layer.name][column]) for column in FIELD_COLUMNS})
        facts[layer.name] = entry
    return facts


def _width(results: pd.DataFrame, layer: str) -> int | None:
    """A layer's width from its values, for runs whose record has none: ``k / saturation``."""
    last = results[results["layer"] == layer]
    k = last.loc[last["stat"] == "intrinsic-dimensionality", "value"].dropna()
    saturation = last.loc[last["stat"] == "saturation", "value"].dropna()
    if len(k) and len(saturation):
        for dimension, value in zip(k.to_numpy()[::-1], saturation.to_numpy()[::-1]):
            if value > 0:
                return round(float(dimension) / float(value))
    return None


def facts_of(results: pd.DataFrame, record: RunRecord | None, order: Sequence[str] | None = None) -> list[LayerFacts]:
    """The :class:`~delve.verdicts.findings.LayerFacts` of a run's layers, in forward order.

    ``order`` defaults to the order in which the layers' values appear in
    ``results`` (delve writes them in forward order), then the record's.
    Layers of the record that never logged a value are left out: there is
    nothing to judge. A width the record lacks (delve 0.1.x) is read from
    ``k / saturation``, else left unknown (``None``: shown, not judged).

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0], "mode": ["train"], "layer": ["fc"], "stat": ["saturation"],
    ...                         "value": [0.5]})
    >>> record = RunRecord(("fc",), ("saturation",), widths={"fc": 8}, facts={"fc": {"bound": 4}})
    >>> facts_of(results, record)
    [LayerFacts(layer='fc', width=8, bound=4, rf_min=None, beyond_input=None, input_size=None)]
    """
    per_layer = results[results["layer"].notna()] if not results.empty else results
    seen = [str(layer) for layer in dict.fromkeys(per_layer["layer"])] if not results.empty else []
    if order is None:
        order = seen + [layer for layer in (record.layers if record is not None else ()) if layer not in seen]
    widths: Mapping[str, int] = record.widths if record is not None else {}
    known: Mapping[str, Mapping[str, Any]] = record.facts if record is not None else {}
    facts = []
    for layer in order:
        if layer not in seen:
            continue
        width = widths.get(layer) or _width(per_layer, layer)
        entry = known.get(layer, {})
        beyond = entry.get("beyond_input")
        facts.append(
            LayerFacts(
                layer,
                int(width) if width else None,
                entry.get("bound"),
                entry.get("rf_min"),
                None if beyond is None else bool(beyond),
                entry.get("input_size"),
            )
        )
    return facts


def report_of(
    results: pd.DataFrame,
    record: RunRecord | None,
    thresholds: Thresholds | None = None,
    order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The report of a run from its tidy values and its record: :func:`~delve.verdicts.findings.find` on its facts.

    What ``tracker.report()``, ``delve report``, the plot writer and the
    TensorBoard writer show.

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0, 1, 2], "mode": "train", "layer": "fc", "stat": "saturation",
    ...                         "value": [0.1, 0.1, 0.1]})
    >>> record = RunRecord(("fc",), ("saturation",), widths={"fc": 100}, facts={"fc": {"bound": 100}})
    >>> report_of(results, record).loc[0, ["layer", "findings"]].tolist()
    ['fc', 'idle-width']
    """
    return find(results, facts_of(results, record, order), thresholds)
