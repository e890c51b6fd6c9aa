"""Text reports of a run: the per-layer table of one epoch and its user scalars.

Used by the console writer and by ``delve summary``; the input is a tidy
table (see :mod:`delve.output.tables`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from ..common.naming import RunRecord, compose_name
from ..statistics.registry import by_name, logged_name
from .tables import is_missing

__all__ = ["summary_table", "format_summary"]


def summary_table(results: pd.DataFrame, epoch: int | None = None, stats: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-layer table of one epoch (the last by default): layers by ``"<mode> <stat>"``.

    ``stats`` selects statistics by key or logged name (``lsat`` or
    ``saturation``); columns use the logged names.

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [0, 0], "mode": ["train", "eval"], "layer": ["fc", "fc"],
    ...                       "stat": ["saturation", "saturation"], "value": [0.5, 0.25]})
    >>> summary_table(frame)
           train saturation  eval saturation
    layer
    fc                  0.5             0.25
    """
    if results.empty:
        return pd.DataFrame(index=pd.Index([], name="layer"))
    epoch = int(results["epoch"].max()) if epoch is None else int(epoch)
    selected = results[(results["epoch"] == epoch) & results["layer"].notna()]
    if stats is not None:
        selected = selected[selected["stat"].isin([logged_name(stat) for stat in stats])]
    columns = [f"{mode} {stat}" for mode, stat in zip(selected["mode"], selected["stat"])]
    long = pd.DataFrame(
        {"layer": selected["layer"].to_numpy(), "column": columns, "value": selected["value"].to_numpy()}
    )
    table = long.pivot_table(index="layer", columns="column", values="value", aggfunc="last", sort=False)
    table = table.reindex(index=list(dict.fromkeys(long["layer"])), columns=list(dict.fromkeys(columns)))
    table.columns.name = None
    table.index.name = "layer"
    return table


def _scalars(results: pd.DataFrame, epoch: int) -> dict[str, float]:
    selected = results[(results["epoch"] == epoch) & results["layer"].isna()]
    return {
        compose_name(None if is_missing(mode) else mode, None, stat): value
        for mode, stat, value in zip(selected["mode"], selected["stat"], selected["value"])
    }


def _format_number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _short_stat(stat: str) -> str:
    statistic = by_name(stat)
    return statistic.key if statistic is not None and statistic.name == stat else stat


def format_summary(
    results: pd.DataFrame,
    epoch: int | None = None,
    stats: Iterable[str] | None = None,
    record: RunRecord | None = None,
) -> str:
    """The per-layer table of one epoch as compact text, user scalars on the last line.

    Columns are ``<mode> <statistic>``: the statistic as ``stats`` names it
    (key or logged name, ``lsat`` or ``saturation``), else by its key
    (``lsat``, ``idim``, ... as in ``stats=``). With the run's ``record``,
    layers are shown with their class and shape (``fc (Linear 32->10)``).

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [2, 2, 2], "mode": ["train", "train", None],
    ...                       "layer": ["conv1", "fc", None], "stat": ["saturation", "saturation", "test_accuracy"],
    ...                       "value": [0.5, 0.125, 0.875]})
    >>> print(format_summary(frame))
    epoch 2
    layer  train lsat
    conv1         0.5
    fc          0.125
    test_accuracy = 0.875
    """
    if results.empty:
        return "no values logged"
    epoch = int(results["epoch"].max()) if epoch is None else int(epoch)
    lines = [f"epoch {epoch}"]
    stats = None if stats is None else list(stats)
    # Each column is headed by the word the caller chose for its statistic.
    words = {logged_name(stat): stat for stat in stats} if stats is not None else {}
    table = summary_table(results, epoch, stats)
    if not table.empty:
        cells = [[record.label(str(layer)) if record is not None else str(layer) for layer in table.index]]
        headers = ["layer"]
        for column in table.columns:
            mode, _, stat = column.partition(" ")
            headers.append(f"{mode} {words.get(stat) or _short_stat(stat)}")
            cells.append([_format_number(value) for value in table[column]])
        widths = [max(len(header), *(len(cell) for cell in column)) for header, column in zip(headers, cells)]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for row in range(len(table)):
            lines.append(
                "  ".join(
                    column[row].ljust(w) if i == 0 else column[row].rjust(w)
                    for i, (column, w) in enumerate(zip(cells, widths))
                )
            )
    scalars = _scalars(results, epoch)
    if scalars:
        lines.append("   ".join(f"{name} = {_format_number(value)}" for name, value in scalars.items()))
    return "\n".join(lines)
