"""Tidy and wide tables of a run's values.

A *wide* table has index ``epoch`` and one column per logged value, as the CSV
file. A *tidy* table has one row per value, with the columns ``epoch``,
``mode`` (``train``/``eval``), ``layer``, ``stat`` (the logged statistic
name, e.g. ``saturation``) and ``value``. Values over all layers of a mode
(``train-average-saturation``) keep ``layer`` empty (``None``); user scalars
(``test_accuracy``) have neither mode nor layer and keep their whole name as
``stat``. Which names are the tracker's is decided by the run's
:class:`~delve.common.naming.RunRecord` when there is one.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..common.naming import RunRecord, classify, compose_name

__all__ = ["TIDY_COLUMNS", "tidy", "tidy_frame", "wide", "is_missing"]

TIDY_COLUMNS = ["epoch", "mode", "layer", "stat", "value"]


def is_missing(value: Any) -> bool:
    """``None`` or NaN: an empty cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def tidy(frame: pd.DataFrame, record: RunRecord | None = None) -> pd.DataFrame:
    """Turn a wide table (index epoch, one column per value) into a tidy one.

    Empty cells (a layer not yet seen, a scalar logged once) are dropped.
    Rows keep the column order of the wide table within each epoch, which for
    delve's own files is the layers' forward order.

    Examples
    --------
    >>> wide_frame = pd.DataFrame({"train-saturation_fc": [0.5, 0.25], "loss": [1.0, None]},
    ...                           index=pd.Index([0, 1], name="epoch"))
    >>> tidy(wide_frame)
       epoch   mode layer        stat  value
    0      0  train    fc  saturation   0.50
    1      0   None  None        loss   1.00
    2      1  train    fc  saturation   0.25
    """
    rows = []
    parts = {str(column): classify(str(column), record) for column in frame.columns}
    for epoch, row in zip(frame.index, frame.itertuples(index=False, name=None)):
        for column, value in zip(frame.columns, row):
            if is_missing(value):
                continue
            mode, layer, stat = parts[str(column)]
            rows.append((int(epoch), mode, layer, stat, float(value)))
    return tidy_frame(rows)


def tidy_frame(rows: list[tuple]) -> pd.DataFrame:
    """A tidy table from ``(epoch, mode, layer, stat, value)`` tuples."""
    # Object columns keep None for "no mode / no layer" on every pandas
    # version (pandas 3 would otherwise infer strings and turn None into NaN).
    columns = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return pd.DataFrame(
        {
            "epoch": pd.Series(columns[0], dtype="int64"),
            "mode": pd.Series(columns[1], dtype=object),
            "layer": pd.Series(columns[2], dtype=object),
            "stat": pd.Series(columns[3], dtype=object),
            "value": pd.Series(columns[4], dtype="float64"),
        }
    )


def wide(results: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`tidy`: index ``epoch``, one column per value name.

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [0, 1], "mode": ["train", "train"], "layer": ["fc", "fc"],
    ...                       "stat": ["saturation", "saturation"], "value": [0.5, 0.25]})
    >>> wide(frame)
           train-saturation_fc
    epoch
    0                     0.50
    1                     0.25
    """
    names = [
        compose_name(None if is_missing(m) else m, None if is_missing(lay) else lay, s)
        for m, lay, s in zip(results["mode"], results["layer"], results["stat"])
    ]
    long = pd.DataFrame({"epoch": results["epoch"].astype("int64"), "name": names, "value": results["value"]})
    order = list(dict.fromkeys(names))
    frame = long.pivot_table(index="epoch", columns="name", values="value", aggfunc="last", sort=False)
    frame = frame.reindex(columns=order).sort_index()
    frame.columns.name = None
    frame.index.name = "epoch"
    return frame
