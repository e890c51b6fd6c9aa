"""A run's report as text: the per-layer table, then the findings in words.

The report itself (one row per layer, findings, actions, evidence) is
:func:`delve.verdicts.facts.report_of`'s; this module only writes it out, the
same way for ``tracker.report()`` printed by the callbacks, ``delve report``
and TensorBoard's text card.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pandas as pd

from ..common.naming import RunRecord
from .tables import is_missing

__all__ = ["TABLE_COLUMNS", "format_report", "markdown_report"]

#: The report's columns printed in the table, with their headers; a column missing for every layer is left out.
TABLE_COLUMNS = {
    "layer": "layer",
    "width": "width",
    "saturation": "saturation",
    "k": "k",
    "bound": "bound",
    "rows": "rows",
    "rf_min": "rf_min",
    "probe_accuracy": "probe",
    "findings": "findings",
}
_WIDTH = 100
_INDENT = 14


def _missing(value: Any) -> bool:
    return is_missing(value) or value is pd.NA or (isinstance(value, str) and not value)


def _cell(column: str, value: Any) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, tuple):
        return "x".join(str(side) for side in value)
    if column in ("saturation", "probe_accuracy"):
        return f"{float(value):.2f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(report: pd.DataFrame, record: RunRecord | None) -> list[str]:
    columns = [column for column in TABLE_COLUMNS if column == "layer" or not report[column].map(_missing).all()]
    cells = []
    for column in columns:
        if column == "layer":
            cells.append([record.label(str(layer)) if record is not None else str(layer) for layer in report[column]])
        else:
            cells.append([_cell(column, value) for value in report[column]])
    headers = [TABLE_COLUMNS[column] for column in columns]
    widths = [max(len(header), *(len(cell) for cell in column)) for header, column in zip(headers, cells)]
    # Text columns read from the left, numbers from the right.
    left = {0, len(columns) - 1} if columns[-1] == "findings" else {0}

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rows = [line(headers)]
    rows += [line([column[row] for column in cells]) for row in range(len(report))]
    return [row.rstrip() for row in rows]


def _groups(report: pd.DataFrame) -> Iterator[tuple[str, list[str], str, str]]:
    """``(finding, layers, evidence, action)``: the tail once over its layers, other findings layer by layer."""
    tail = [index for index in report.index if "tail" in str(report.loc[index, "findings"]).split(", ")]
    if tail:
        first = tail[0]
        evidence = str(report.loc[first, "evidence"]).split("; ")[0]
        yield "tail", [str(report.loc[index, "layer"]) for index in tail], evidence, str(report.loc[first, "action"])
    for index in report.index:
        found = [word for word in str(report.loc[index, "findings"]).split(", ") if word]
        said = str(report.loc[index, "evidence"]).split("; ")
        for position, word in enumerate(found):
            if word == "tail":
                continue
            action = "as for the tail above" if "tail" in found else str(report.loc[index, "action"])
            evidence = said[position] if position < len(said) else ""
            yield word, [str(report.loc[index, "layer"])], evidence, action


def _wrapped(label: str, text: str) -> list[str]:
    lines = textwrap.wrap(text, _WIDTH - _INDENT - len(label)) or [""]
    pad = " " * (_INDENT + len(label))
    return [" " * _INDENT + label + lines[0], *(pad + line for line in lines[1:])]


def format_report(report: pd.DataFrame, record: RunRecord | None = None, epoch: int | None = None) -> str:
    """The report as text: a table of the layers, then each finding with its layers, evidence and action.

    Parameters
    ----------
    report : pandas.DataFrame
        :func:`delve.verdicts.facts.report_of`'s table (``tracker.report()``).
    record : RunRecord, optional
        The run's record: layers shown with their class and shape.
    epoch : int, optional
        The epoch the values are from, for the heading.

    Examples
    --------
    >>> from delve.verdicts.findings import LayerFacts, find
    >>> results = pd.DataFrame({"epoch": [0, 1, 2], "mode": "train", "layer": "fc", "stat": "saturation",
    ...                         "value": [0.1, 0.1, 0.1]})
    >>> print(format_report(find(results, [LayerFacts("fc", width=100)]), epoch=2))
    delve report, epoch 2: 1 layer, 1 finding
    layer  width  saturation   k  bound  findings
    fc       100        0.10  10    100  idle-width
    <BLANKLINE>
    Findings
      idle-width  fc
                  saw: 10 directions hold the variance, of its width 100, for 3 epochs (saturation
                       0.10-0.10)
                  do:  Narrow fc from 100 to about 10: that many directions hold its variance.
    """
    groups = list(_groups(report))
    layers = len(report)
    heading = "delve report" + (f", epoch {epoch}" if epoch is not None else "")
    count = f"{len(groups)} finding{'s' if len(groups) != 1 else ''}" if groups else "no findings"
    lines = [f"{heading}: {layers} layer{'s' if layers != 1 else ''}, {count}"]
    if layers:
        lines += _table(report, record)
    lines.append("")
    if not groups:
        lines.append(
            "No findings: no tail, no idle width, no dead layer, and enough rows for every statistic "
            "(thresholds: delve.verdicts.findings.Thresholds)."
            if layers
            else "No findings: no layer has values to judge yet."
        )
        return "\n".join(lines)
    lines.append("Findings")
    for word, names, evidence, action in groups:
        shown = [record.label(name) if record is not None else name for name in names]
        where = shown[0] if len(shown) == 1 else f"{shown[0]} to {shown[-1]} ({len(shown)} layers)"
        lines.append(f"  {word.ljust(_INDENT - 4)}  {where}")
        if evidence:
            lines += _wrapped("saw: ", evidence)
        lines += _wrapped("do:  ", action)
    return "\n".join(lines)


def markdown_report(report: pd.DataFrame, record: RunRecord | None = None, epoch: int | None = None) -> str:
    """:func:`format_report` as Markdown (TensorBoard's text card): one preformatted block, columns kept.

    Examples
    --------
    >>> markdown_report(pd.DataFrame(columns=list(TABLE_COLUMNS) + ["action", "evidence"])).splitlines()[0]
    '    delve report: 0 layers, no findings'
    """
    return "\n".join(f"    {line}" if line else "" for line in format_report(report, record, epoch).splitlines())
