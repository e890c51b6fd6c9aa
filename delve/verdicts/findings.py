"""Findings: what a run's numbers suggest changing, each with its evidence and one action.

These are heuristics of the saturation papers, not proofs: each finding says
what it saw. The thresholds are the fields of :class:`Thresholds` (tunable):

* **too-few-rows**: the last epoch's values rest on fewer than
  ``rows_per_feature`` rows per direction the layer's outputs can span (its
  width, or its rank bound where smaller, as the budget counts rows; below
  one row per feature the values are missing altogether). Nothing else is
  judged on them.
* **dead**: the layer's outputs do not vary (no direction holds variance).
* **idle-width**: ``k``, the fewest directions holding ``sat_threshold`` of
  the variance, is at most ``idle_share`` of the directions the layer can use,
  and has stayed within ``stable_spread`` (a share of the width) over the
  last ``stable_epochs`` epochs. The directions a layer can use are its
  width, or for an affine layer its rank bound (:func:`~delve.verdicts.facts.rank_bound`; a
  widening layer cannot fill its width; its saturation is judged against what
  it could reach). Action: a width of about ``k``.
* **tail**: a run of final layers (at least two), all past the
  receptive-field border (their smallest field exceeds the input on some
  axis), over which saturation falls: none of them is more than
  ``tail_rise`` above the layer before the run, and the last is at least
  ``tail_drop`` below it; where probes ran, the run gains at most
  ``probe_gain`` probe accuracy over the best layer before it. Of the runs
  that qualify, the longest is reported. Without receptive fields
  (attention, recurrent layers) the probes alone decide, and are required.
  Action: remove them, raise the input resolution to about the field where
  the tail begins, or downsample later.

The defaults and where they come from:

* ``rows_per_feature = 20``: the budget's floor
  (:data:`delve.budget.cost_model.ROWS_PER_FEATURE`); below it a
  covariance's small eigenvalues, and so ``k``, are noise.
* ``idle_share = 0.5``, ``stable_epochs = 3``, ``stable_spread = 0.05``: a
  layer using half the directions it could, steadily, has room to shrink by
  half; the papers' advice ("layers with low saturation can be narrowed")
  gives no number, so these are deliberately cautious.
* ``tail_drop = 0.1``: ten points of saturation, several directions at the
  widths where tails are seen (32 to 512); the papers' tails fall from about
  0.9 to 0.3 or less.
* ``tail_rise = 0.01``: one direction in a hundred; saturation is a count
  of directions, so a flat stretch moves by ``1/d``.
* ``probe_gain = 0.02``: about two standard errors of an accuracy near 0.95
  measured on 500 evaluation samples (``sqrt(0.95 * 0.05 / 500)`` is about
  0.01); a smaller gain cannot be told from noise. On the plain CNN of
  ``examples/receptive_field_tail.py`` at 8x8 (359 held-out digits) the
  held-out probe reached 0.967 at ``conv6`` and at most 0.978 after it,
  while moving by up to 0.11 between single layers before (0.919, 0.827,
  0.936 at ``conv3``-``conv5``); the in-sample probe was flat at 0.99-1.00
  from ``conv5``. Asking for a gain of at most 0.01 found no tail there; the
  default was set to 0.02 after that run, on the noise estimate above.

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
    """The thresholds of the findings (see the module docstring for each, and where its default comes from).

    Examples
    --------
    >>> Thresholds(probe_gain=0.05).probe_gain, Thresholds().tail_drop
    (0.05, 0.1)
    """

    rows_per_feature: int = ROWS_PER_FEATURE
    idle_share: float = 0.5
    stable_epochs: int = 3
    stable_spread: float = 0.05
    tail_drop: float = 0.1
    tail_rise: float = 0.01
    probe_gain: float = 0.02


@dataclass(frozen=True)
class LayerFacts:
    """What is known of a layer apart from its values.

    Attributes
    ----------
    layer : str
        Its name.
    width : int or None
        ``d``, its observation's width; ``None`` where unknown (a run of
        delve 0.1.x): its values are shown, not judged.
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
    width: int | None
    bound: int | None = None
    rf_min: int | tuple[int, ...] | None = None
    beyond_input: bool | None = None
    input_size: int | tuple[int, ...] | None = None

    @property
    def usable(self) -> int:
        if self.bound and self.width:
            return min(self.bound, self.width)
        return self.bound or self.width or 0


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
            k = round(value * fact.width) if fact.width else math.nan
        records.append(
            {
                "layer": fact.layer,
                "width": fact.width if fact.width else math.nan,
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
    if not fact.width:
        return  # nothing to judge a width against
    # Rows are logged when they are few (or under a budget): a missing saturation without them was not asked for.
    # Counted per direction the outputs can span, as the budget counts them: a widening layer needs no more rows.
    directions = min(fact.width, fact.bound) if fact.bound else fact.width
    if not math.isnan(rows) and (math.isnan(value) or rows < thresholds.rows_per_feature * directions):
        found.append("too-few-rows")
        shown = "fewer rows than features" if math.isnan(value) else f"{int(rows)} rows"
        spans = f"the {directions} directions its {fact.width} features can span" if directions < fact.width else (
            f"{fact.width} features"
        )
        evidence.append(f"{shown} for {spans} ({thresholds.rows_per_feature} per direction wanted)")
        report.loc[index, "action"] = (
            f"Record more rows for {name}: a longer epoch, or a larger max_overhead; its values are noise until then."
        )
        return
    if math.isnan(k):
        return
    if k == 0:
        found.append("dead")
        evidence.append("no direction of its outputs holds any variance")
        report.loc[index, "action"] = (
            f"Check {name}: its outputs do not vary (dead units, a zeroed weight, or a layer without gradient)."
        )
        return
    history = saturation[name].dropna().iloc[-thresholds.stable_epochs :] if name in saturation.columns else ()
    stable = len(history) >= 2 and float(history.max() - history.min()) <= thresholds.stable_spread
    if k <= thresholds.idle_share * fact.usable and stable:
        found.append("idle-width")
        bound = f"the {fact.usable} it can use" if fact.usable < fact.width else f"its width {fact.width}"
        evidence.append(
            f"{int(k)} directions hold the variance, of {bound}, for {len(history)} epochs "
            f"(saturation {float(history.min()):.2f}-{float(history.max()):.2f})"
        )
        report.loc[index, "action"] = (
            f"Narrow {name} from {fact.width} to about {int(k)}: that many directions hold its variance."
        )


def _tail_start(
    values: list[float], accuracy: list[float], beyond: list[bool] | None, thresholds: Thresholds
) -> int | None:
    """Where the longest qualifying tail of these layers starts (see the module docstring), or ``None``."""
    probes = not any(math.isnan(value) for value in accuracy)
    if beyond is None and not probes:
        return None  # without receptive fields, only the probes can show that the last layers add nothing
    for start in range(1, len(values) - 1):
        if beyond is not None and not all(beyond[start:]):
            continue
        before = values[start - 1]
        if max(values[start:]) > before + thresholds.tail_rise or before - values[-1] < thresholds.tail_drop:
            continue
        if probes and max(accuracy[start:]) - max(accuracy[:start]) > thresholds.probe_gain:
            continue
        return start
    return None


def _judge_tail(report: pd.DataFrame, facts: Sequence[LayerFacts], thresholds: Thresholds) -> None:
    """The longest run of final layers whose saturation falls past the border (or where the probes are flat)."""
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
    accuracy = [float(report.loc[index, "probe_accuracy"]) for index in candidates]
    beyond = [bool(facts[index].beyond_input) for index in candidates] if with_fields else None
    start = _tail_start(values, accuracy, beyond, thresholds)
    if start is None:
        return
    tail = candidates[start:]
    first, last, before = facts[tail[0]], facts[tail[-1]], facts[candidates[start - 1]]
    said = [f"saturation falls from {values[start - 1]:.2f} ({before.layer}) to {values[-1]:.2f}"]
    if with_fields:
        said.append(f"past the border: fields of {_pixels(first.rf_min)} on an input of {_pixels(first.input_size)}")
    if not any(math.isnan(value) for value in accuracy):
        gain = max(accuracy[start:]) - max(accuracy[:start])
        if gain >= 0:
            said.append(f"probe accuracy gains {gain:+.3f} on the best layer before")
        else:
            said.append(f"probe accuracy stays {-gain:.3f} below the best layer before")
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
