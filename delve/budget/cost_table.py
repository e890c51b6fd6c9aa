"""How the cost table prints: percentages, compact counts, every column on a terminal's width.

:meth:`~delve.budget.cost_model.CostModel.frame` (behind
:meth:`delve.SaturationTracker.cost`) returns a :class:`CostTable`: its values
are plain numbers, its printed form is for reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from .layer_cost import INPUT

__all__ = ["CostTable", "COST_COLUMNS"]


def _count(value: Any) -> str:
    return str(int(value))


def _compact(value: Any) -> str:
    """``2.2M`` for 2_230_000: the size of a count at a glance."""
    value = float(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


def _percent(value: Any) -> str:
    value = float(value)
    if math.isnan(value):
        return "n/a"
    percent = 100 * value
    return f"{percent:.0f}%" if abs(percent) >= 10 else f"{percent:.1f}%"


#: The columns of :meth:`CostModel.frame`, in order, each with how a printed table shows it.
COST_COLUMNS: dict[str, Callable[[Any], str]] = {
    "layer": str,
    "rows": _count,
    "features": _count,
    "update": _compact,
    "training": _compact,
    "overhead": _percent,
    "share": _percent,
    "kept_rows": _count,
    "kept_overhead": _percent,
    "route": lambda value: "in" if value == INPUT else "out",
    "probe": _percent,
    "epoch_overhead": _percent,
}


#: Columns a printed table leaves out while they hold nothing (no probes; no epoch ended yet).
OPTIONAL_COLUMNS = ("probe", "epoch_overhead")


class CostTable(pd.DataFrame):
    """:meth:`CostModel.frame`'s table: a DataFrame that prints readably.

    The values are plain numbers (``overhead`` 3.47 is 347 %); printed, the
    table fits a terminal: percentages, compact counts, one space between
    columns, every column shown but the optional ones that hold nothing yet
    (:data:`OPTIONAL_COLUMNS`). A selection of columns or rows is an
    ordinary DataFrame again.

    Examples
    --------
    >>> table = CostTable.from_records([{"layer": "fc", "rows": 64, "features": 512, "update": 8_404_992,
    ...     "training": 1_572_864, "overhead": 3.47, "share": 1.0, "kept_rows": 64, "kept_overhead": 3.47}])
    >>> print(table)
    layer rows features update training overhead share kept_rows kept_overhead
    fc      64      512   8.4M    1.57M     347%  100%        64          347%
    """

    def shown_columns(self) -> list[str]:
        """The columns the printed table shows: all but the optional ones that hold nothing yet."""
        return [
            str(name)
            for name in self.columns
            if name not in OPTIONAL_COLUMNS or not (self[name].isna() | (self[name] == 0)).all()
        ]

    def _cells(self) -> list[list[str]]:
        shown = {name: COST_COLUMNS.get(name, str) for name in self.shown_columns()}
        frame = self[list(shown)]
        return [[str(name) for name in shown]] + [
            [show(value) for show, value in zip(shown.values(), row)] for row in frame.itertuples(index=False)
        ]

    def __repr__(self) -> str:
        rows = self._cells()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        # The first column (names) is left-aligned, the numbers right-aligned under their headers.
        lines = [
            " ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])])
            for row in rows
        ]
        return "\n".join(line.rstrip() for line in lines)

    def _repr_html_(self) -> str:
        cells = self._cells()
        return pd.DataFrame(cells[1:], columns=cells[0]).to_html(index=False)
