"""The figures of a run: per-layer profiles, layers-by-epochs heatmaps, averages, embeddings.

Each figure has a canvas of its own, outside pyplot (:mod:`delve.output.canvas`).
Titles start with the run's name, so a downloaded image says where it came
from; layers may be shown with their class and shape (``2 (Linear
256->256)``), and saturation bars with ``k`` and ``d``. Axes of statistics
bounded on both sides come from their
:class:`~delve.statistics.registry.Statistic` record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator

from ..statistics.registry import STATISTICS, by_name, logged_name
from .canvas import draw_later, figure_to_rgb, new_figure, save_figure

__all__ = [
    "axis_limits",
    "new_figure",
    "profile_figure",
    "heatmap_figure",
    "history_figure",
    "embedding_figure",
    "save_figure",
    "figure_to_rgb",
    "draw_later",
    "DEFAULT_FONTSIZE",
]

DEFAULT_FONTSIZE = 11


def axis_limits(stat: str) -> tuple[float, float] | None:
    """The fixed axis of a statistic (key or logged name) bounded on both sides, else ``None``.

    Examples
    --------
    >>> axis_limits("saturation"), axis_limits("lsat"), axis_limits("covariance-trace"), axis_limits("test_accuracy")
    ((0.0, 1.0), (0.0, 1.0), None, None)
    """
    statistic = by_name(logged_name(stat))
    if statistic is None or not statistic.bounded:
        return None
    low, high = statistic.bounds
    return float(low), float(high)  # type: ignore[arg-type]


def _text_width_inches(labels: Sequence[str], fontsize: float) -> float:
    """Width of the widest label as matplotlib will draw it."""
    if not labels:
        return 0.0
    measure = TextToPath()
    font = FontProperties(size=fontsize)
    return max(measure.get_text_width_height_descent(label, font, ismath=False)[0] for label in labels) / 72.0


def _row_height(fontsize: float) -> float:
    """Height in inches of one labelled row (a layer)."""
    return 0.34 * max(1.0, fontsize / DEFAULT_FONTSIZE)


def _framed_axes(
    labels: Sequence[str],
    fontsize: float,
    plot_width: float,
    rows: int,
    title_lines: int,
    right: float = 0.4,
    max_height: float | None = None,
) -> tuple[Figure, object]:
    """A figure sized around one axes so the labels fit without a tight-bbox pass.

    ``bbox_inches="tight"`` draws every figure twice; sizing the margins from
    the measured label widths costs almost nothing. The axes is at most
    ``max_height`` inches high, when given.
    """
    em = fontsize / 72.0
    left = 0.3 + _text_width_inches(labels, fontsize)
    top = 0.25 + 1.35 * em * 1.1 * title_lines
    bottom = 0.3 + 2.6 * em
    plot_height = max(1.2, _row_height(fontsize) * rows)
    if max_height is not None:
        plot_height = min(plot_height, max(1.2, max_height))
    width, height = left + plot_width + right, bottom + plot_height + top
    figure = new_figure(width, height)
    axes = figure.add_axes((left / width, bottom / height, plot_width / width, plot_height / height))
    return figure, axes


def profile_figure(
    values: Mapping[str, float],
    stat: str,
    mode: str,
    epoch: int,
    primary: tuple[str, float] | None = None,
    fontsize: float = DEFAULT_FONTSIZE,
    run: str | None = None,
    widths: Mapping[str, int] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """One bar per layer, in the given (forward) order, top to bottom.

    Layer names are drawn in full on the vertical axis. Statistics bounded on
    both sides (saturation: 0..1) use a fixed axis so epochs compare at a
    glance. Non-finite values
    (a singular covariance's log-determinant) are labelled instead of drawn.
    With the layers' widths, saturation bars also say ``k/d`` and intrinsic
    dimensionality bars ``k of d``.

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
    run : str, optional
        The run's name, put first in the title so that a downloaded image
        says where it came from.
    widths : mapping, optional
        Layer name -> its width ``d``.
    labels : mapping, optional
        Layer name -> how the axis shows it (``2 (Linear 256->256)``).

    Examples
    --------
    >>> figure = profile_figure({"conv1": 0.5, "fc": 0.25}, "saturation", "train", 3, ("test_accuracy", 0.9), run="vgg",
    ...                         widths={"conv1": 8, "fc": 4}, labels={"fc": "fc (Linear 8->4)"})
    >>> [float(limit) for limit in figure.axes[0].get_xlim()], figure.axes[0].get_title().splitlines()[0]
    ([0.0, 1.0], 'vgg: saturation (train), epoch 3')
    >>> [text.get_text().strip() for text in figure.axes[0].texts]
    ['0.5 (4/8)', '0.25 (1/4)']
    >>> [label.get_text() for label in figure.axes[0].get_yticklabels()]
    ['conv1', 'fc (Linear 8->4)']
    """
    layers = list(values)
    shown = [(labels or {}).get(layer, layer) for layer in layers]
    numbers = np.array([float(values[layer]) for layer in layers], dtype=np.float64)
    finite = np.isfinite(numbers)
    figure, axes = _framed_axes(shown, fontsize, 6.0, len(layers), 2 if primary is not None else 1, right=0.9)
    positions = np.arange(len(layers))
    axes.barh(positions[finite], numbers[finite], color="tab:blue", height=0.7)
    axes.set_yticks(positions, labels=shown, fontsize=fontsize)
    axes.set_ylim(len(layers) - 0.5, -0.5)
    axes.tick_params(axis="x", labelsize=fontsize * 0.9)
    limits = axis_limits(stat)
    if limits is not None:
        axes.set_xlim(*limits)
    elif finite.any():
        low, high = min(0.0, float(numbers[finite].min())), max(0.0, float(numbers[finite].max()))
        pad = 0.12 * (high - low) or 1.0
        axes.set_xlim(low - (pad if low < 0 else 0.0), high + pad)
    for layer, position, number, ok in zip(layers, positions, numbers, finite):
        # Labels sit just past the bar's end; a nearly full saturation bar gets
        # its label inside, since the axis stops at 1.
        inside = ok and limits is not None and number > limits[0] + 0.7 * (limits[1] - limits[0])
        text = _bar_text(stat, number, (widths or {}).get(layer))
        if inside or (ok and number < 0):
            align, label = "right", f"{text} "
        else:
            align, label = "left", f" {text}"
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
    axes.set_xlabel(f"{stat} = k / d" if stat == _SATURATION and widths else stat, fontsize=fontsize)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    title = _run_prefix(run) + f"{stat} ({mode}), epoch {epoch}"
    if primary is not None:
        title += f"\n{primary[0]} = {_format(primary[1])}"
    axes.set_title(title, fontsize=fontsize * 1.1)
    return figure


def heatmap_figure(
    history: pd.DataFrame,
    stat: str,
    mode: str,
    fontsize: float = DEFAULT_FONTSIZE,
    run: str | None = None,
    max_height: float | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Layers (rows, forward order) by epochs (columns), coloured by value.

    Statistics bounded on both sides use a fixed colour scale. Epochs missing from
    ``history`` are left blank. With ``max_height``, a network with more
    layers than fit gets thinner rows and a label on every k-th layer, so the
    image keeps its shape at any depth (TensorBoard shows it in a small card).

    Parameters
    ----------
    history : pandas.DataFrame
        Index: layer names; columns: epochs; cells: values.
    stat, mode : str
        Statistic name and ``train``/``eval``, for the title and the scale.
    fontsize : float
        Base font size.
    run : str, optional
        The run's name, put first in the title.
    max_height : float, optional
        Highest plot area in inches; default: one full row per layer.
    labels : mapping, optional
        Layer name -> how the axis shows it (``2 (Linear 256->256)``).

    Examples
    --------
    >>> history = pd.DataFrame({0: [0.2, 0.9], 1: [0.3, 0.8]}, index=["conv1", "fc"])
    >>> figure = heatmap_figure(history, "saturation", "train", run="vgg")
    >>> figure.axes[0].images[0].get_clim(), figure.axes[0].get_title()
    ((0.0, 1.0), 'vgg: saturation (train) per layer and epoch')
    """
    epochs = [int(epoch) for epoch in history.columns]
    first, last = (min(epochs), max(epochs)) if epochs else (0, 0)
    full = history.reindex(columns=range(first, last + 1))
    data = np.ma.masked_invalid(full.to_numpy(dtype=np.float64))
    layers = [(labels or {}).get(str(layer), str(layer)) for layer in history.index]
    width = min(14.0, max(4.0, 0.12 * (last - first + 1) + 3.0))
    every = 1
    if max_height is not None and layers:
        # A label needs about 1.5 line heights; rows thinner than that share one.
        every = max(1, math.ceil(len(layers) * 1.5 * fontsize / 72 / max(1.2, max_height)))
    ticks = np.arange(0, len(layers), every)
    shown = [layers[tick] for tick in ticks]
    figure, axes = _framed_axes(shown, fontsize, width, len(layers), 1, right=1.3, max_height=max_height)
    limits = axis_limits(stat)
    scale = {"vmin": limits[0], "vmax": limits[1]} if limits is not None else {}
    image = axes.imshow(
        data,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(first - 0.5, last + 0.5, len(layers) - 0.5, -0.5),
        **scale,
    )
    axes.set_yticks(ticks, labels=shown, fontsize=fontsize)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    axes.tick_params(axis="x", labelsize=fontsize * 0.9)
    axes.set_xlabel("epoch", fontsize=fontsize)
    axes.set_title(_run_prefix(run) + f"{stat} ({mode}) per layer and epoch", fontsize=fontsize * 1.1)
    box = axes.get_position()
    figure_width = figure.get_size_inches()[0]
    colorbar_axes = figure.add_axes((box.x1 + 0.15 / figure_width, box.y0, 0.18 / figure_width, box.height))
    colorbar = figure.colorbar(image, cax=colorbar_axes)
    colorbar_axes.tick_params(labelsize=fontsize * 0.8)
    colorbar.set_label(stat, fontsize=fontsize)
    return figure


def history_figure(
    history: Mapping[str, pd.Series], stat: str, fontsize: float = DEFAULT_FONTSIZE, run: str | None = None
) -> Figure:
    """One line per mode over epochs, for values over all layers (``average-saturation``).

    Parameters
    ----------
    history : mapping
        Mode -> series indexed by epoch.
    run : str, optional
        The run's name, put first in the title.

    Examples
    --------
    >>> figure = history_figure({"train": pd.Series([0.5, 0.4], index=[0, 1])}, "average-saturation", run="vgg")
    >>> [float(limit) for limit in figure.axes[0].get_ylim()], figure.axes[0].get_title()
    ([0.0, 1.0], 'vgg: average-saturation per epoch')
    """
    figure = new_figure(6.0, 3.2)
    axes = figure.add_axes((0.12, 0.16, 0.84, 0.72))
    for mode, series in history.items():
        axes.plot(series.index.to_numpy(), series.to_numpy(dtype=np.float64), marker="o", label=mode)
    limits = axis_limits(stat)
    if limits is not None:
        axes.set_ylim(*limits)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    axes.set_xlabel("epoch", fontsize=fontsize)
    axes.set_ylabel(stat, fontsize=fontsize)
    axes.tick_params(labelsize=fontsize * 0.9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=fontsize * 0.8, frameon=False)
    axes.set_title(_run_prefix(run) + f"{stat} per epoch", fontsize=fontsize * 1.1)
    return figure


def embedding_figure(coordinates: np.ndarray, title: str, fontsize: float = DEFAULT_FONTSIZE) -> Figure:
    """A scatter plot of sampled outputs on a layer's two leading eigenvectors (``embed``).

    Examples
    --------
    >>> embedding_figure(np.zeros((5, 2)), "embedded-sample (train), fc").axes[0].get_xlabel()
    'eigenvector 1'
    """
    figure = new_figure(4.2, 4.2)
    axes = figure.add_axes((0.16, 0.13, 0.78, 0.76))
    points = np.asarray(coordinates, dtype=np.float64).reshape(len(coordinates), -1)
    second = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
    axes.scatter(points[:, 0], second, s=6, alpha=0.6, linewidths=0)
    axes.set_xlabel("eigenvector 1", fontsize=fontsize)
    axes.set_ylabel("eigenvector 2", fontsize=fontsize)
    axes.tick_params(labelsize=fontsize * 0.8)
    axes.set_title(title, fontsize=fontsize)
    return figure


def _run_prefix(run: str | None) -> str:
    return f"{run}: " if run else ""


_SATURATION = STATISTICS["lsat"].name
_DIMENSIONALITY = STATISTICS["idim"].name


def _bar_text(stat: str, value: float, width: int | None) -> str:
    """A bar's label: the value, and for saturation and intrinsic dimensionality also ``k`` and ``d``."""
    if width and math.isfinite(value):
        if stat == _SATURATION:
            return f"{_format(value)} ({round(value * width)}/{width})"
        if stat == _DIMENSIONALITY:
            return f"{_format(value)} of {width}"
    return _format(value)


def _format(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"
