"""Draw a run's figures into a folder: the plot writer's and ``delve plot``'s job.

The input is a tidy table as returned by :func:`delve.output.results.load_results`
(columns epoch, mode, layer, stat, value); the figures themselves are built
in :mod:`delve.output.figures`, whose functions are re-exported here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..common.naming import RunRecord
from ..statistics.registry import STATISTICS, logged_name
from ..verdicts.facts import facts_of, report_of
from .figures import (
    DEFAULT_FONTSIZE,
    axis_limits,
    embedding_figure,
    figure_to_rgb,
    heatmap_figure,
    history_figure,
    new_figure,
    profile_figure,
    save_figure,
)
from .layout import heatmap_filename, history_filename, profile_filename, verdict_filename
from .verdict_figure import verdict_figure, verdict_series

__all__ = [
    "plot_results",
    "draw_verdicts",
    "find_primary_metric",
    "axis_limits",
    "new_figure",
    "profile_figure",
    "heatmap_figure",
    "history_figure",
    "embedding_figure",
    "save_figure",
    "figure_to_rgb",
]


def plot_results(
    results: pd.DataFrame,
    out_dir: str | os.PathLike,
    epochs: str | Sequence[int] = "current",
    primary_metric: str | None = "auto",
    fontsize: float = DEFAULT_FONTSIZE,
    heatmap_stats: Iterable[str] = ("saturation",),
    run: str | None = None,
    record: RunRecord | None = None,
) -> list[Path]:
    """Draw a run's figures into ``out_dir``; returns the files written.

    For every (statistic, mode) with per-layer values, a profile: by default
    the latest epoch's, ``<stat>_<mode>_profile.png`` (the file the plot
    writer keeps up to date); or one per selected epoch,
    ``<stat>_<mode>_epoch_<NNNNN>.png``. For every mode of each statistic in
    ``heatmap_stats``: ``<stat>_<mode>_heatmap.png`` over all epochs of
    ``results``. For every value over all layers (the average saturation):
    ``<stat>_history.png`` over all epochs, both modes in one figure. When
    the run logged training saturation: the report drawn, ``verdicts.png``
    (:func:`draw_verdicts`). File names are :mod:`delve.output.layout`'s. The plot writer and ``delve
    plot`` draw through this function, so a run's figures redrawn from its
    files are the ones drawn during training.

    Parameters
    ----------
    results : pandas.DataFrame
        Tidy table (see :mod:`delve.output.tables`).
    out_dir : str or path
        Folder for the PNGs (created if needed).
    epochs : "current", "last", "all" or list of int
        ``"current"``: the latest epoch's profile under the name without an
        epoch; otherwise the epochs that get a profile file of their own
        (an empty list: none).
    primary_metric : str, optional
        A user scalar shown under each profile's title. ``"auto"``: the
        run's accuracy (:func:`find_primary_metric`), if it logged one;
        ``None``: none.
    fontsize : float
        Base font size.
    heatmap_stats : iterable of str
        Statistics (keys or logged names) that get a layers-by-epochs heatmap.
    run : str, optional
        The run's name, first in every title.
    record : RunRecord, optional
        The run's record: layers shown with their class and shape, and
        saturation bars with ``k`` and ``d``.

    Examples
    --------
    >>> import tempfile
    >>> results = pd.DataFrame({"epoch": [0, 1], "mode": ["train"] * 2, "layer": ["fc"] * 2,
    ...                         "stat": ["saturation"] * 2, "value": [0.5, 0.25]})
    >>> [p.name for p in plot_results(results, tempfile.mkdtemp())]
    ['saturation_train_profile.png', 'saturation_train_heatmap.png', 'verdicts.png']
    >>> [p.name for p in plot_results(results, tempfile.mkdtemp(), epochs="all")][:2]
    ['saturation_train_epoch_00000.png', 'saturation_train_epoch_00001.png']
    """
    if isinstance(epochs, str) and epochs not in ("current", "last", "all"):
        raise ValueError(f"epochs must be 'current', 'last', 'all' or a list of ints, got {epochs!r}")
    out = Path(out_dir)
    has_mode = results["mode"].notna()
    per_layer = results[results["layer"].notna() & has_mode]
    per_mode = results[results["layer"].isna() & has_mode]
    if primary_metric == "auto":
        primary_metric = find_primary_metric(results)
    labels = {layer: record.label(layer) for layer in record.layers} if record is not None else {}
    widths = dict(record.widths) if record is not None else {}
    written: list[Path] = []
    if not per_layer.empty:
        for epoch in _selected_epochs(per_layer, epochs):
            current = per_layer[per_layer["epoch"] == epoch]
            primary = _primary(results, epoch, primary_metric)
            for (stat, mode), group in current.groupby(["stat", "mode"], sort=False):
                values = dict(zip(group["layer"], group["value"]))
                figure = profile_figure(values, str(stat), str(mode), epoch, primary, fontsize, run, widths, labels)
                name = profile_filename(str(stat), str(mode), None if epochs == "current" else epoch)
                written.append(save_figure(figure, out / name))
        for stat in (logged_name(stat) for stat in heatmap_stats):
            chosen = per_layer[per_layer["stat"] == stat]
            for mode, group in chosen.groupby("mode", sort=False):
                history = group.pivot_table(index="layer", columns="epoch", values="value", aggfunc="last", sort=False)
                history = history.reindex(index=list(dict.fromkeys(group["layer"])))
                figure = heatmap_figure(history, stat, str(mode), fontsize, run, labels=labels)
                written.append(save_figure(figure, out / heatmap_filename(stat, str(mode))))
    for stat, group in per_mode.groupby("stat", sort=False):
        lines = {
            str(mode): rows.groupby("epoch")["value"].last().sort_index()
            for mode, rows in group.groupby("mode", sort=False)
        }
        figure = history_figure(lines, str(stat), fontsize, run)
        written.append(save_figure(figure, out / history_filename(str(stat))))
    figure = draw_verdicts(results, record, fontsize, run)
    if figure is not None:
        written.append(save_figure(figure, out / verdict_filename()))
    return written


_SATURATION = STATISTICS["lsat"].name


def draw_verdicts(
    results: pd.DataFrame,
    record: RunRecord | None = None,
    fontsize: float = DEFAULT_FONTSIZE,
    run: str | None = None,
    order: Sequence[str] | None = None,
) -> Figure | None:
    """The verdict figure of a run (:mod:`delve.output.verdict_figure`), ``None`` without training saturation.

    The report is :func:`delve.verdicts.facts.report_of`'s, from ``results``
    and the record's facts (the receptive-field border where they hold one).

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0, 0], "mode": ["train"] * 2, "layer": ["a", "b"],
    ...                         "stat": ["saturation"] * 2, "value": [0.5, 0.25]})
    >>> draw_verdicts(results).axes[0].get_xticklabels()[1].get_text()
    'b'
    """
    trained = results[(results["stat"] == _SATURATION) & (results["mode"] == "train") & results["layer"].notna()]
    if trained.empty:
        return None
    facts = facts_of(results, record, order)
    if not facts:
        return None
    report = report_of(results, record, order=[fact.layer for fact in facts])
    series = verdict_series(results, [fact.layer for fact in facts])
    sizes = [fact.input_size for fact in facts if fact.input_size is not None]
    beyond = [fact.beyond_input for fact in facts]
    epoch = int(trained["epoch"].max())
    return verdict_figure(report, series, beyond, sizes[0] if sizes else None, epoch, fontsize, run, record)


#: Words that make a user scalar an accuracy, and those that rank one accuracy above another.
_ACCURACY = re.compile(r"(?<![a-z])acc(?:uracy)?(?![a-z])", re.IGNORECASE)
_HELD_OUT = (re.compile(r"test", re.IGNORECASE), re.compile(r"val|eval", re.IGNORECASE))


def find_primary_metric(results: pd.DataFrame) -> str | None:
    """The user scalar to show on profiles when none is named: the run's accuracy, held-out first.

    Among user scalars whose name holds ``acc`` or ``accuracy`` as a word
    (``test-accuracy``, ``val_acc``, ``acc_top1``), a test accuracy comes
    first, then a validation one, then any; ``None`` when the run logged no
    accuracy.

    Examples
    --------
    >>> results = pd.DataFrame({"epoch": [0, 0, 0], "mode": [None] * 3, "layer": [None] * 3,
    ...                         "stat": ["train-accuracy", "val_acc", "loss"], "value": [0.9, 0.8, 0.3]})
    >>> find_primary_metric(results)
    'val_acc'
    """
    scalars = results[results["layer"].isna() & results["mode"].isna()]
    names = [str(name) for name in dict.fromkeys(scalars["stat"]) if _ACCURACY.search(str(name))]
    for pattern in _HELD_OUT:
        preferred = [name for name in names if pattern.search(name)]
        if preferred:
            return preferred[0]
    return names[0] if names else None


def _selected_epochs(per_layer: pd.DataFrame, epochs: str | Sequence[int]) -> list[int]:
    if epochs in ("current", "last"):
        return [int(per_layer["epoch"].max())]
    if epochs == "all":
        return sorted({int(epoch) for epoch in per_layer["epoch"]})
    return sorted({int(epoch) for epoch in epochs})
def _primary(results: pd.DataFrame, epoch: int, name: str | None) -> tuple[str, float] | None:
    if not name:
        return None
    match = results[
        (results["epoch"] == epoch) & results["layer"].isna() & results["mode"].isna() & (results["stat"] == name)
    ]
    if match.empty:
        return None
    return name, float(match["value"].iloc[-1])
