"""Draw a run's figures into a folder: the plot writer's and ``delve plot``'s job.

The input is a tidy table as returned by :func:`delve.output.results.load_results`
(columns epoch, mode, layer, stat, value); the figures themselves are built
in :mod:`delve.output.figures`, whose functions are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

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
from .layout import heatmap_filename, history_filename, profile_filename

__all__ = [
    "plot_results",
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
    epochs: str | Sequence[int] = "last",
    primary_metric: str | None = None,
    fontsize: float = DEFAULT_FONTSIZE,
    heatmap_stats: Iterable[str] = ("saturation",),
) -> list[Path]:
    """Draw a run's figures into ``out_dir``; returns the files written.

    For every selected epoch and every (statistic, mode) with per-layer
    values: a profile ``<stat>_<mode>_epoch_<NNNNN>.png``. For every mode
    of each statistic in ``heatmap_stats``: ``<stat>_<mode>_heatmap.png``
    over all epochs of ``results``. For every value over all layers (the
    average saturation): ``<stat>_history.png`` over all epochs, both modes
    in one figure. File names are :mod:`delve.output.layout`'s.

    Parameters
    ----------
    results : pandas.DataFrame
        Tidy table (see :mod:`delve.output.tables`).
    out_dir : str or path
        Folder for the PNGs (created if needed).
    epochs : "last", "all" or list of int
        Which epochs get profiles.
    primary_metric : str, optional
        A user scalar (e.g. ``"test_accuracy"``) shown on each profile.
    fontsize : float
        Base font size.
    heatmap_stats : iterable of str
        Statistics that get a layers-by-epochs heatmap.

    Examples
    --------
    >>> import tempfile
    >>> results = pd.DataFrame({"epoch": [0, 1], "mode": ["train"] * 2, "layer": ["fc"] * 2,
    ...                         "stat": ["saturation"] * 2, "value": [0.5, 0.25]})
    >>> [p.name for p in plot_results(results, tempfile.mkdtemp())]
    ['saturation_train_epoch_00001.png', 'saturation_train_heatmap.png']
    """
    if isinstance(epochs, str) and epochs not in ("last", "all"):
        raise ValueError(f"epochs must be 'last', 'all' or a list of ints, got {epochs!r}")
    out = Path(out_dir)
    has_mode = results["mode"].notna()
    per_layer = results[results["layer"].notna() & has_mode]
    per_mode = results[results["layer"].isna() & has_mode]
    written: list[Path] = []
    if not per_layer.empty:
        for epoch in _selected_epochs(per_layer, epochs):
            current = per_layer[per_layer["epoch"] == epoch]
            primary = _primary(results, epoch, primary_metric)
            for (stat, mode), group in current.groupby(["stat", "mode"], sort=False):
                values = dict(zip(group["layer"], group["value"]))
                figure = profile_figure(values, str(stat), str(mode), epoch, primary, fontsize)
                written.append(save_figure(figure, out / profile_filename(str(stat), str(mode), epoch)))
        for stat in heatmap_stats:
            chosen = per_layer[per_layer["stat"] == stat]
            for mode, group in chosen.groupby("mode", sort=False):
                history = group.pivot_table(index="layer", columns="epoch", values="value", aggfunc="last", sort=False)
                history = history.reindex(index=list(dict.fromkeys(group["layer"])))
                figure = heatmap_figure(history, stat, str(mode), fontsize)
                written.append(save_figure(figure, out / heatmap_filename(stat, str(mode))))
    for stat, group in per_mode.groupby("stat", sort=False):
        lines = {
            str(mode): rows.groupby("epoch")["value"].last().sort_index()
            for mode, rows in group.groupby("mode", sort=False)
        }
        written.append(save_figure(history_figure(lines, str(stat), fontsize), out / history_filename(str(stat))))
    return written


def _selected_epochs(per_layer: pd.DataFrame, epochs: str | Sequence[int]) -> list[int]:
    if epochs == "last":
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
