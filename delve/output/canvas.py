"""Figures outside pyplot: a canvas of their own, saved atomically, rendered to pixels, drawn off the training thread.

Figures are built on matplotlib's object API with an Agg canvas, never through
``pyplot``: nothing is registered in pyplot's global figure list, the user's
backend is left alone, and a figure is freed as soon as it is saved, so a
100-epoch run does not grow memory. Works headless. The figures themselves are
in :mod:`delve.output.figures`.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..common.files import atomic_path

__all__ = ["new_figure", "save_figure", "figure_to_rgb", "draw_later"]

T = TypeVar("T")


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
            figure.savefig(tmp, format="png", dpi=dpi)
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


_drawer: ThreadPoolExecutor | None = None
_drawer_lock = threading.Lock()


def draw_later(job: Callable[[], T]) -> Future[T]:
    """Run a drawing job on delve's one drawing thread; the caller collects the result (or error).

    Rendering a run's figures costs far more than computing its statistics
    (matplotlib lays out every label), so the writers draw while training
    goes on. One thread draws for every writer of the process, in order:
    matplotlib is not thread-safe, and delve's own figures never overlap. The
    thread finishes its jobs before the interpreter exits.

    Examples
    --------
    >>> draw_later(lambda: 6 * 7).result()
    42
    """
    global _drawer
    with _drawer_lock:
        if _drawer is None:
            _drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delve-figures")
            atexit.register(_drawer.shutdown, wait=True)
        return _drawer.submit(job)
