"""Figures of a run: per-layer profiles and layers-by-epochs heatmaps.

Figures are built on matplotlib's object API with an Agg canvas, never through
``pyplot``: nothing is registered in pyplot's global figure list, the user's
backend is left alone, and a figure is freed as soon as it is saved, so a
100-epoch run does not grow memory. Works headless.

The input is a tidy table as returned by :func:`delve.results.load_results`
(columns epoch, mode, layer, stat, value).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io import atomic_path
from .writers import layout

__all__ = [
    "BOUNDED_STATS",
    "new_figure",
    "profile_figure",
    "heatmap_figure",
    "save_figure",
    "figure_to_rgb",
    "plot_results",
]

#: Statistics that live in [0, 1] and are drawn on a fixed 0..1 axis.
BOUNDED_STATS = ("saturation", "average-saturation")
DEFAULT_FONTSIZE = 11


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure with its own Agg canvas, outside pyplot.

    Examples
    --------
    >>> new_figure(4, 3).get_size_inches().tolist()
    [4.0, 3.0]
    """
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def profile_figure(
    values: Mapping[str, float],
    stat: str,
    mode: str,
    epoch: int,
    primary: tuple[str, float] | None = None,
    fontsize: float = DEFAULT_FONTSIZE,
) -> Figure:
    """One bar per layer, in the given (forward) order, top to bottom.

    Layer names are drawn in full on the vertical axis. Saturation statistics
    use a fixed 0..1 axis so epochs compare at a glance. Non-finite values
    (a singular covariance's log-determinant) are labelled instead of drawn.

    Parameters
    ----------
    values : mapping
        Layer name -> value, in forward order.
    stat, mode : str
        Statistic name and ``train``/``eval``, for the title.
    epoch : int
        Epoch shown in the title.
    primary : (str, float), optional
        A user metric (the writer's ``primary_metric``) shown under the title.
    fontsize : float
        Base font size.

    Examples
    --------
    >>> figure = profile_figure({"conv1": 0.5, "fc": 0.25}, "saturation", "train", 3, ("test_accuracy", 0.9))
    >>> figure.axes[0].get_xlim()
    (0.0, 1.0)
    """
    layers = list(values)
    numbers = np.array([float(values[layer]) for layer in layers], dtype=np.float64)
    finite = np.isfinite(numbers)
    figure = new_figure(8.0, max(2.5, 0.38 * len(layers) + 1.6))
    axes = figure.add_subplot()
    positions = np.arange(len(layers))
    axes.barh(positions[finite], numbers[finite], color="tab:blue", height=0.7)
    axes.set_yticks(positions, labels=layers, fontsize=fontsize)
    axes.set_ylim(len(layers) - 0.5, -0.5)
    axes.tick_params(axis="x", labelsize=fontsize * 0.9)
    bounded = stat in BOUNDED_STATS
    if bounded:
        axes.set_xlim(0.0, 1.0)
    elif finite.any():
        low, high = min(0.0, float(numbers[finite].min())), max(0.0, float(numbers[finite].max()))
        pad = 0.12 * (high - low) or 1.0
        axes.set_xlim(low - (pad if low < 0 else 0.0), high + pad)
    for position, number, ok in zip(positions, numbers, finite):
        # Labels sit just past the bar's end; a full saturation bar gets its
        # label inside, since the axis stops at 1.
        inside = ok and bounded and number > 0.85
        if inside or (ok and number < 0):
            align, label = "right", f"{_format(number)} "
        else:
            align, label = "left", f" {_format(number)}"
        axes.text(
            number if ok else 0.0,
            position,
            label,
            va="center",
            ha=align,
            fontsize=fontsize * 0.8,
            color="white" if inside else "black",
            clip_on=False,
        )
    axes.set_xlabel(stat, fontsize=fontsize)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    title = f"{stat} ({mode}), epoch {epoch}"
    if primary is not None:
        title += f"\n{primary[0]} = {_format(primary[1])}"
    axes.set_title(title, fontsize=fontsize * 1.1)
    return figure


def heatmap_figure(history: pd.DataFrame, stat: str, mode: str, fontsize: float = DEFAULT_FONTSIZE) -> Figure:
    """Layers (rows, forward order) by epochs (columns), coloured by value.

    Saturation statistics use a fixed 0..1 colour scale. Epochs missing from
    ``history`` are left blank.

    Parameters
    ----------
    history : pandas.DataFrame
        Index: layer names; columns: epochs; cells: values.

    Examples
    --------
    >>> history = pd.DataFrame({0: [0.2, 0.9], 1: [0.3, 0.8]}, index=["conv1", "fc"])
    >>> figure = heatmap_figure(history, "saturation", "train")
    >>> figure.axes[0].images[0].get_clim()
    (0.0, 1.0)
    """
    epochs = [int(epoch) for epoch in history.columns]
    first, last = (min(epochs), max(epochs)) if epochs else (0, 0)
    full = history.reindex(columns=range(first, last + 1))
    data = np.ma.masked_invalid(full.to_numpy(dtype=np.float64))
    layers = [str(layer) for layer in history.index]
    width = min(18.0, max(6.5, 0.12 * (last - first + 1) + 5.0))
    figure = new_figure(width, max(2.5, 0.38 * len(layers) + 1.6))
    axes = figure.add_subplot()
    limits = {"vmin": 0.0, "vmax": 1.0} if stat in BOUNDED_STATS else {}
    image = axes.imshow(
        data,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(first - 0.5, last + 0.5, len(layers) - 0.5, -0.5),
        **limits,
    )
    axes.set_yticks(np.arange(len(layers)), labels=layers, fontsize=fontsize)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    axes.tick_params(axis="x", labelsize=fontsize * 0.9)
    axes.set_xlabel("epoch", fontsize=fontsize)
    axes.set_title(f"{stat} ({mode}) per layer and epoch", fontsize=fontsize * 1.1)
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label(stat, fontsize=fontsize)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``figure`` as PNG atomically; the figure is cleared afterwards.

    Examples
    --------
    >>> import os, tempfile
    >>> path = save_figure(new_figure(2, 2), os.path.join(tempfile.mkdtemp(), "f.png"))
    >>> path.stat().st_size > 0
    True
    """
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        figure.clear()
    return target


def figure_to_rgb(figure: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array (for TensorBoard images).

    Examples
    --------
    >>> figure_to_rgb(new_figure(2, 1, dpi=50)).shape
    (50, 100, 3)
    """
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    figure.clear()
    return rgb


def _format(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def _layer_values(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["layer"].notna() & results["mode"].notna()]


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
    over all epochs of ``results``.

    Parameters
    ----------
    results : pandas.DataFrame
        Tidy table (see :mod:`delve.results`).
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
    per_layer = _layer_values(results)
    if per_layer.empty:
        return []
    if epochs == "last":
        selected = [int(per_layer["epoch"].max())]
    elif epochs == "all":
        selected = sorted({int(epoch) for epoch in per_layer["epoch"]})
    else:
        selected = sorted({int(epoch) for epoch in epochs})
    written: list[Path] = []
    for epoch in selected:
        current = per_layer[per_layer["epoch"] == epoch]
        primary = _primary(results, epoch, primary_metric)
        for (stat, mode), group in current.groupby(["stat", "mode"], sort=False):
            values = dict(zip(group["layer"], group["value"]))
            figure = profile_figure(values, str(stat), str(mode), epoch, primary, fontsize)
            written.append(save_figure(figure, out / layout.profile_filename(str(stat), str(mode), epoch)))
    for stat in heatmap_stats:
        chosen = per_layer[per_layer["stat"] == stat]
        for mode, group in chosen.groupby("mode", sort=False):
            history = group.pivot_table(index="layer", columns="epoch", values="value", aggfunc="last", sort=False)
            history = history.reindex(index=list(dict.fromkeys(group["layer"])))
            figure = heatmap_figure(history, stat, str(mode), fontsize)
            written.append(save_figure(figure, out / layout.heatmap_filename(stat, str(mode))))
    return written


def _primary(results: pd.DataFrame, epoch: int, name: str | None) -> tuple[str, float] | None:
    if not name:
        return None
    match = results[(results["epoch"] == epoch) & results["layer"].isna() & results["mode"].isna() & (results["stat"] == name)]
    if match.empty:
        return None
    return name, float(match["value"].iloc[-1])
