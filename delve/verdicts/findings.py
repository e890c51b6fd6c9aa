"""Findings: what a run's numbers suggest changing, each with its evidence and one action.

These are heuristics of the saturation papers, not proofs: each finding says
what it saw. The thresholds are the fields of :class:`Thresholds` (tunable):

* **too-few-rows**: the last epoch's values rest on fewer than
  ``rows_per_feature`` rows per feature (below one per feature they are
  missing altogether). Nothing else is judged on them.
* **dead**: the layer's outputs do not vary (no direction holds variance).
* **idle-width**: ``k``, the fewest directions holding ``sat_threshold`` of
  the variance, is at most ``idle_share`` of the directions the layer can use,
  and has stayed within ``stable_spread`` (a share of the width) over the
  last ``stable_epochs`` epochs. The directions a layer can use are its
  width, or for an affine layer the rank bound ``min(d_in k^2, d_out)`` (a
  widening layer cannot fill its width; its saturation is judged against what
  it could reach). Action: a width of about ``k``.
* **tail**: a run of final layers whose saturation falls by at least
  ``tail_drop`` from the peak before them, all past the receptive-field border
  (their smallest field exceeds the input on some axis) and, where probes
  ran, gaining at most ``probe_gain`` probe accuracy. Without receptive fields
  (attention, recurrent layers) the probes alone decide, and are required.
  Action: remove them, raise the input resolution to about the field where
  the tail begins, or downsample later.

Sources: Richter et al., "Should You Go Deeper? Optimizing Convolutional
Neural Network Architectures without Training" (2021) and "Feature Space
Saturation during Training" (2020) for the tail and the border; Shenk et al.
(JOSS, 2022) for saturation itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..budget.cost_model import ROWS_PER_FEATURE

__all__ = ["Thresholds", "LayerFacts", "FINDINGS", "REPORT_COLUMNS", "find"]

#: The keywords a report's ``findings`` column uses.
FINDINGS = ("tail", "idle-width", "dead", "too-few-rows")
#: The columns of a report, in order.
REPORT_COLUMNS = (
    "layer",
    "width",
    "saturation",
    "k",
    "bound",
    "rows",
    "rf_min",
    "probe_accuracy",
    "findings",
    "action",
    "evidence",
)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of the findings (see the module docstring for each)."""

    rows_per_feature: int = ROWS_PER_FEATURE
    idle_share: float = 0.5
    stable_epochs: int = 3
    stable_spread: float = 0.05
    tail_drop: float = 0.1
    probe_gain: float = 0.01


@dataclass(frozen=True)
class LayerFacts:
    """What is known of a layer apart from its values.

    Attributes
    ----------
    layer : str
        Its name.
    width : int
        ``d``, its observation's width.
    bound : int or None
        The most directions it can use (the rank bound of an affine layer);
        ``None``: its width.
    rf_min : int, tuple or None
        Its smallest receptive field, where known.
    beyond_input : bool or None
        Whether that field exceeds the input on some axis; ``None`` where unknown.
    input_size : int, tuple or None
        The input's spatial size, where known.
    """

    layer: str
    width: int
    bound: int | None = None
    rf_min: int | tuple[int, ...] | None = None
    beyond_input: bool | None = None
    input_size: int | tuple[int, ...] | None = None

    @property
    def usable(self) -> int:
        return self.bound if self.bound else self.width


def _series(results: pd.DataFrame, stat: str, mode: str = "train") -> pd.DataFrame:
    """Values of ``stat`` in ``mode`` as epochs x layers."""
    rows = results[(results["stat"] == stat) & (results["mode"] == mode) & results["layer"].notna()]
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="epoch", columns="layer", values="value", aggfunc="last", dropna=False)


def _last(table: pd.DataFrame, layer: str) -> float:
    if table.empty or layer not in table.columns:
        return math.nan
    column = table[layer].dropna()
    return float(column.iloc[-1]) if len(column) else math.nan


def find(
    results: pd.DataFrame, facts: Sequence[LayerFacts], thresholds: Thresholds | None = None
) -> pd.DataFrame:
    """The report of a run: one row per layer (in ``facts``' order, the forward order), with findings.

    Parameters
    ----------
    results : pandas.DataFrame
        The run's tidy table (``epoch, mode, layer, stat, value``), as
        :func:`delve.load_results` reads it.
    facts : sequence of LayerFacts
        The tracked layers, in forward order.
    thresholds : Thresholds, optional
        The thresholds of the findings.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`REPORT_COLUMNS`: the last epoch's training saturation,
        ``k``, the usable directions, the rows, the smallest receptive field,
        the probe's accuracy on the evaluation samples (else the training
        ones), the comma-separated findings, one action and the evidence.

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0, 1, 2], "mode": "train", "layer": "fc", "stat": "saturation",
    ...                         "value": [0.1, 0.11, 0.1]})
    >>> report = find(results, [LayerFacts("fc", width=100)])
    >>> report.loc[0, "findings"], report.loc[0, "action"]
    ('idle-width', 'Narrow fc from 100 to about 10: that many directions hold its variance.')
    """
    thresholds = thresholds or Thresholds()
    saturation = _series(results, "saturation")
    dimension = _series(results, "intrinsic-dimensionality")
    rows = _series(results, "rows")
    accuracy = _series(results, "probe-accuracy", "eval")
    if accuracy.empty:
        accuracy = _series(results, "probe-accuracy")
    records = []
    for fact in facts:
        value = _last(saturation, fact.layer)
        k = _last(dimension, fact.layer)
        if math.isnan(k) and not math.isnan(value):
            k = round(value * fact.width)
        records.append(
            {
                "layer": fact.layer,
                "width": fact.width,
                "saturation": value,
                "k": k,
                "bound": fact.usable,
                "rows": _last(rows, fact.layer),
                "rf_min": fact.rf_min,
                "probe_accuracy": _last(accuracy, fact.layer),
                "findings": [],
                "action": "",
                "evidence": [],
            }
        )
    report = pd.DataFrame.from_records(records, columns=list(REPORT_COLUMNS))
    for index, fact in enumerate(facts):
        _judge_layer(report, index, fact, saturation, thresholds)
    _judge_tail(report, facts, thresholds)
    report["findings"] = [", ".join(found) for found in report["findings"]]
    report["evidence"] = ["; ".join(said) for said in report["evidence"]]
    return report


def _judge_layer(
    report: pd.DataFrame, index: int, fact: LayerFacts, saturation: pd.DataFrame, thresholds: Thresholds
) -> None:
    row = report.loc[index]
    value, k, rows = row["saturation"], row["k"], row["rows"]
    found, evidence = row["findings"], row["evidence"]
    name = fact.layer
    if math.isnan(value) or (not math.isnan(rows) and rows < thresholds.rows_per_feature * fact.width):
        found.append("too-few-rows")
        shown = "fewer rows than features" if math.isnan(value) else f"{int(rows)} rows"
        evidence.append(f"{shown} for {fact.width} features ({thresholds.rows_per_feature} per feature wanted)")
        report.loc[index, "action"] = (
            f"Record more rows for {name}: a longer epoch, or a larger max_overhead; its values are noise until then."
        )
        return
    if k == 0:
        found.append("dead")
        evidence.append("no direction of its outputs holds any variance")
        report.loc[index, "action"] = (
            f"Check {name}: its outputs do not vary (dead units, a zeroed weight, or a layer without gradient)."
        )
        return
    history = saturation[name].dropna().iloc[-thresholds.stable_epochs :] if name in saturation.columns else []
    stable = len(history) >= 2 and float(history.max() - history.min()) <= thresholds.stable_spread
    if k <= thresholds.idle_share * fact.usable and stable:
        found.append("idle-width")
        bound = f"the {fact.usable} it can use" if fact.bound else f"its width {fact.width}"
        evidence.append(
            f"{int(k)} directions hold the variance, of {bound}, for {len(history)} epochs "
            f"(saturation {float(history.min()):.2f}-{float(history.max()):.2f})"
        )
        report.loc[index, "action"] = (
            f"Narrow {name} from {fact.width} to about {int(k)}: that many directions hold its variance."
        )


def _judge_tail(report: pd.DataFrame, facts: Sequence[LayerFacts], thresholds: Thresholds) -> None:
    """The run of final layers whose saturation falls past the border (or past the probes' plateau)."""
    judged = [
        index
        for index, fact in enumerate(facts)
        if "too-few-rows" not in report.loc[index, "findings"] and not math.isnan(report.loc[index, "saturation"])
    ]
    with_fields = [index for index in judged if facts[index].beyond_input is not None]
    candidates = with_fields or judged
    if len(candidates) < 3:
        return
    values = [float(report.loc[index, "saturation"]) for index in candidates]
    peak = len(values) - 1
    while peak > 0 and values[peak - 1] + 0.01 >= values[peak]:
        peak -= 1
    tail = candidates[peak + 1 :]
    if len(tail) < 2 or values[peak] - values[-1] < thresholds.tail_drop:
        return
    accuracy = [float(report.loc[index, "probe_accuracy"]) for index in [candidates[peak], *tail]]
    probes = not any(math.isnan(value) for value in accuracy)
    gain = max(accuracy[1:]) - accuracy[0] if probes else math.nan
    if probes and gain > thresholds.probe_gain:
        return
    if with_fields:
        if not all(facts[index].beyond_input for index in tail):
            return
    elif not probes:
        return  # without receptive fields, only the probes can show that the last layers add nothing
    first, last = facts[tail[0]], facts[tail[-1]]
    drop = f"saturation falls from {values[peak]:.2f} to {values[-1]:.2f}"
    said = [drop]
    if with_fields:
        said.append(f"past the border: fields of {first.rf_min} on an input of {first.input_size}")
    if probes:
        said.append(f"probe accuracy gains {gain:+.3f}")
    if with_fields:
        action = (
            f"Remove {first.layer} to {last.layer}, or raise the input resolution to about {_pixels(first.rf_min)} "
            "pixels, or downsample later: these layers see beyond the input and add little."
        )
    else:
        action = f"Remove {first.layer} to {last.layer}: the probes gain nothing there and saturation falls."
    for index in tail:
        report.loc[index, "findings"].insert(0, "tail")
        report.loc[index, "evidence"].insert(0, ", ".join(said))
        report.loc[index, "action"] = action


def _pixels(field: int | tuple[int, ...] | None) -> str:
    if field is None:
        return "the field"
    if isinstance(field, tuple):
        return "x".join(str(side) for side in field)
    return str(field)
