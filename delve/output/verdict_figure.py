"""The verdict figure: per layer, saturation and probe accuracy, the receptive-field border, the tail, the findings.

One figure for the whole report (:func:`delve.verdicts.facts.report_of`):
layers on the horizontal axis in forward order, named with their class and
shape; train and eval saturation and the probe's accuracy on one 0..1 axis;
a vertical line before the first layer whose smallest receptive field exceeds
the input; the tail shaded; above the plot, a strip naming each layer's
findings. Its width grows with the layers up to a limit, then labels thin out
(every k-th layer), so it reads at 12 layers and at 80.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..common.naming import RunRecord
from .canvas import new_figure
from .figures import DEFAULT_FONTSIZE, _text_width_inches

__all__ = ["verdict_figure", "verdict_series"]

# Inches per layer, and the plot's widths: 12 layers get room, 80 layers fit a screen.
_PER_LAYER = 0.42
_MIN_WIDTH, _MAX_WIDTH = 6.0, 17.0
_PLOT_HEIGHT, _STRIP_HEIGHT = 3.4, 0.75
_SHORT = {"tail": "tail", "idle-width": "idle width", "dead": "dead", "too-few-rows": "few rows"}
_COLOURS = {"train": "tab:blue", "eval": "tab:orange", "probe": "tab:green", "tail": "0.55", "border": "tab:red"}


def _last_values(results: pd.DataFrame, stat: str, mode: str) -> dict[str, float]:
    rows = results[(results["stat"] == stat) & (results["mode"] == mode) & results["layer"].notna()]
    return {str(layer): float(group["value"].iloc[-1]) for layer, group in rows.sort_values("epoch").groupby("layer")}


def verdict_series(results: pd.DataFrame, layers: Sequence[str]) -> dict[str, list[float]]:
    """The lines of the figure, per layer in ``layers``' order: each mode's saturation and the probe's accuracy.

    The probe is the evaluation samples' (``probe (eval)``), else the
    training samples' (``probe (train)``); series with no value are left out.

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0, 0], "mode": ["train", "eval"], "layer": ["fc", "fc"],
    ...                         "stat": ["saturation", "probe-accuracy"], "value": [0.5, 0.9]})
    >>> verdict_series(results, ["fc"])
    {'saturation (train)': [0.5], 'probe (eval)': [0.9]}
    """
    series: dict[str, list[float]] = {}
    for mode in ("train", "eval"):
        values = _last_values(results, "saturation", mode)
        if values:
            series[f"saturation ({mode})"] = [values.get(layer, math.nan) for layer in layers]
    for mode in ("eval", "train"):
        values = _last_values(results, "probe-accuracy", mode)
        if values:
            series[f"probe ({mode})"] = [values.get(layer, math.nan) for layer in layers]
            break
    return series


def _style(name: str, dense: bool) -> dict[str, object]:
    marker = 3 if dense else 5
    if name.startswith("probe"):
        return {"color": _COLOURS["probe"], "linestyle": ":", "marker": "^", "markersize": marker, "linewidth": 1.6}
    mode = "eval" if "eval" in name else "train"
    line = "--" if mode == "eval" else "-"
    return {"color": _COLOURS[mode], "linestyle": line, "marker": "o", "markersize": marker, "linewidth": 1.6}


def _spans(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of indices as ``(first, last)``."""
    spans: list[tuple[int, int]] = []
    for index in indices:
        if spans and index == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))
    return spans


def verdict_figure(
    report: pd.DataFrame,
    series: Mapping[str, Sequence[float]],
    beyond_input: Sequence[bool | None] | None = None,
    input_size: object = None,
    epoch: int | None = None,
    fontsize: float = DEFAULT_FONTSIZE,
    run: str | None = None,
    record: RunRecord | None = None,
) -> Figure:
    """The report as one figure (see the module docstring).

    Parameters
    ----------
    report : pandas.DataFrame
        :func:`delve.verdicts.facts.report_of`'s table, one row per layer in forward order.
    series : mapping of str -> sequence of float
        The lines, one value per layer (:func:`verdict_series`).
    beyond_input : sequence of bool or None, optional
        Per layer, whether its smallest receptive field exceeds the input
        (``None``: unknown); the border is drawn before the first ``True``.
    input_size : int or tuple, optional
        The input's spatial size, named at the border.
    epoch : int, optional
        The epoch of the values, in the title.
    fontsize : float
        Base font size.
    run : str, optional
        The run's name, first in the title.
    record : RunRecord, optional
        The run's record: layers named with their class and shape.

    Examples
    --------
    >>> from delve.verdicts.findings import LayerFacts, find
    >>> values = [0.9, 0.95, 0.9, 0.6, 0.3]
    >>> results = pd.DataFrame({"epoch": 0, "mode": "train", "layer": [str(i) for i in range(5)],
    ...                         "stat": "saturation", "value": values})
    >>> facts = [LayerFacts(str(i), 32, 32, 3 + 2 * i, 3 + 2 * i > 6, 6) for i in range(5)]
    >>> report = find(results, facts)
    >>> figure = verdict_figure(report, verdict_series(results, list(report["layer"])), [f.beyond_input for f in facts],
    ...                         6, epoch=0, run="cnn")
    >>> figure.axes[0].get_title()
    'cnn: saturation, probes and findings per layer, epoch 0'
    >>> sorted(text.get_text() for text in figure.axes[0].texts)
    ['fields exceed the input (6) ', 'tail']
    """
    layers = [str(layer) for layer in report["layer"]]
    count = len(layers)
    labels = [record.label(layer) if record is not None else layer for layer in layers]
    dense = count > 30
    tick_size = fontsize * (0.75 if dense else 0.85)
    plot_width = min(_MAX_WIDTH, max(_MIN_WIDTH, _PER_LAYER * count))
    # A label needs about 1.4 line heights across; thinner columns share one.
    every = max(1, math.ceil(count * 1.4 * tick_size / 72 / plot_width))
    shown = list(range(0, count, every))
    label_height = _text_width_inches([labels[index] for index in shown], tick_size)
    em = fontsize / 72
    bottom = 0.2 + label_height + 0.8 * em
    top = 0.25 + 4.0 * em  # the title, and the legend's row under it
    left, right = 0.45 + 3.0 * em, 0.3
    width = left + plot_width + right
    height = bottom + _PLOT_HEIGHT + _STRIP_HEIGHT + top
    figure = new_figure(width, height)
    axes = figure.add_axes((left / width, bottom / height, plot_width / width, _PLOT_HEIGHT / height))
    strip = figure.add_axes(
        (left / width, (bottom + _PLOT_HEIGHT) / height, plot_width / width, _STRIP_HEIGHT / height), sharex=axes
    )
    positions = np.arange(count)
    for name, values in series.items():
        axes.plot(positions, np.asarray(values, dtype=np.float64), label=name, **_style(name, dense))
    axes.set_ylim(0.0, 1.05)
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylabel("saturation, probe accuracy", fontsize=fontsize)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.tick_params(axis="y", labelsize=fontsize * 0.85)
    axes.set_xticks([positions[index] for index in shown], labels=[labels[index] for index in shown])
    axes.tick_params(axis="x", labelsize=tick_size, labelrotation=90)
    found = [[word for word in str(text).split(", ") if word] for text in report["findings"]]
    _shade_tail(axes, strip, [index for index, words in enumerate(found) if "tail" in words], fontsize)
    _mark_border(axes, beyond_input, input_size, fontsize)
    _label_findings(strip, found, fontsize, dense)
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(axis="x", bottom=False, labelbottom=False)
    for side in ("top", "right", "left"):
        strip.spines[side].set_visible(False)
    strip.set_ylabel("findings", fontsize=fontsize * 0.8, rotation=0, ha="right", va="center")
    title = (f"{run}: " if run else "") + "saturation, probes and findings per layer"
    if epoch is not None:
        title += f", epoch {epoch}"
    # Above the strip and the legend's row: the title stays the main axes' own (figure.axes[0]).
    axes.set_title(title, fontsize=fontsize * 1.1, y=1.0 + (_STRIP_HEIGHT + 2.3 * em) / _PLOT_HEIGHT, pad=0)
    if series:
        figure.legend(
            loc="lower center",
            bbox_to_anchor=((left + plot_width / 2) / width, (bottom + _PLOT_HEIGHT + _STRIP_HEIGHT) / height),
            ncol=len(series),
            fontsize=fontsize * 0.8,
            frameon=False,
            borderaxespad=0.1,
        )
    return figure


def _shade_tail(axes: object, strip: object, tail: Sequence[int], fontsize: float) -> None:
    for first, last in _spans(tail):
        for target in (axes, strip):
            target.axvspan(first - 0.5, last + 0.5, color=_COLOURS["tail"], alpha=0.18, linewidth=0)  # type: ignore[attr-defined]
        axes.text(  # type: ignore[attr-defined]
            (first + last) / 2, 0.03, "tail", ha="center", va="bottom", fontsize=fontsize * 0.9, color="0.2"
        )


def _mark_border(axes: object, beyond: Sequence[bool | None] | None, size: object, fontsize: float) -> None:
    first = next((index for index, value in enumerate(beyond or ()) if value), None)
    if first is None:
        return
    x = first - 0.5
    axes.axvline(x, color=_COLOURS["border"], linewidth=1.4, linestyle="-")  # type: ignore[attr-defined]
    shown = "x".join(str(side) for side in size) if isinstance(size, tuple) else str(size)
    text = "fields exceed the input" + (f" ({shown})" if size is not None else "")
    axes.text(  # type: ignore[attr-defined]
        x, 0.5, f"{text} ", rotation=90, ha="right", va="center", fontsize=fontsize * 0.8, color=_COLOURS["border"]
    )


def _label_findings(strip: object, found: Sequence[Sequence[str]], fontsize: float, dense: bool) -> None:
    # The tail is the shaded span; the strip names every other finding on its layer.
    for index, words in enumerate(found):
        others = [_SHORT.get(word, word) for word in words if word != "tail"]
        if not others:
            continue
        strip.text(  # type: ignore[attr-defined]
            index,
            0.05,
            ", ".join(others),
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=fontsize * (0.65 if dense else 0.75),
            clip_on=False,
        )
