"""CSV plus figures: per-layer profiles and saturation heatmaps, redrawn every epoch."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

from ..output.figures import draw_later
from ..output.layout import PROFILE_PATTERN, run_name
from ..output.layout import plot_dir as default_plot_dir
from ..output.plotting import plot_results
from ..output.tables import tidy
from .base import writing
from .csv import CSVWriter

__all__ = ["CSVandPlottingWriter", "PlotWriter"]

logger = logging.getLogger("delve")


class CSVandPlottingWriter(CSVWriter):
    """Write the CSV and, at every :meth:`save`, PNG figures of the epoch.

    For every statistic and mode with per-layer values:

    * ``<savepath>/plots/<stat>_<mode>_profile.png``: one bar per layer in
      forward order, named with its class and shape (``fc1 (Linear
      64->128)``), saturation on a fixed 0..1 axis with ``k/d`` on each bar,
      the ``primary_metric`` (e.g. test accuracy) under the title; redrawn
      every epoch, so it shows the latest one (``epoch_profiles=True``: one
      file per epoch instead);
    * ``<savepath>/plots/saturation_<mode>_heatmap.png``: layers by epochs,
      redrawn every epoch so it grows with training;
    * ``<savepath>/plots/average-saturation_history.png``: the average over
      layers per epoch (``average_sat=True``; with ``layerwise_sat=False`` it
      is the only figure).

    Titles start with the run's name. ``delve plot`` draws the same figures
    from the run's files. Figures are drawn off-screen (Agg, no pyplot) and
    freed after saving, so long runs do not accumulate memory. See
    :mod:`delve.output.plotting`.

    Parameters
    ----------
    savepath : str
        The run's path prefix; the CSV is ``<savepath>.csv``.
    fontsize : float
        Base font size of the figures.
    primary_metric : str, optional
        Name of a user scalar (``tracker.add_scalar("test-accuracy", ...)``)
        shown on every profile. ``"auto"`` (default): the run's accuracy, if
        it logs one (:func:`~delve.output.plotting.find_primary_metric`);
        ``None``: none.
    plot_dir : str, optional
        Folder for the PNGs instead of ``<savepath>/plots``.
    epoch_profiles : bool
        ``False`` (default): one profile per statistic and mode, redrawn
        every epoch. ``True``: a profile file per epoch instead (100 epochs,
        3 statistics, 2 modes: 600 files).
    background : bool
        Draw the figures on delve's drawing thread (default), so training
        does not wait for matplotlib: an epoch's figures are on disk when the
        next :meth:`save` or :meth:`close` returns, and a drawing error is
        raised there. ``False`` draws before :meth:`save` returns.

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> writer = CSVandPlottingWriter(run, fontsize=16)
    >>> writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
    >>> writer.add_scalar("test-accuracy", 0.9, epoch=0)
    >>> writer.close()
    >>> sorted(os.listdir(os.path.join(run, "plots")))
    ['saturation_train_heatmap.png', 'saturation_train_profile.png', 'verdicts.png']
    """

    def __init__(
        self,
        savepath: str,
        fontsize: float = 11,
        primary_metric: str | None = "auto",
        plot_dir: str | None = None,
        epoch_profiles: bool = False,
        background: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(savepath)
        self.fontsize = float(fontsize)
        self.primary_metric = primary_metric
        self.plot_dir = Path(plot_dir) if plot_dir is not None else default_plot_dir(self.savepath)
        self.epoch_profiles = bool(epoch_profiles)
        self.background = bool(background)
        self._unplotted: set[int] = set()
        self._drawing: Future[Any] | None = None

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        epoch = self._resolve_epoch(epoch)
        super().add_scalar(name, value, epoch, **kwargs)
        self._unplotted.add(epoch)

    def save(self) -> None:
        super().save()
        self.finish_drawing()
        if not self._unplotted:
            return
        epochs = sorted(self._unplotted)
        self._unplotted.clear()
        draw = partial(
            plot_results,
            tidy(self.dataframe(), self.run_record),  # a snapshot: later values do not leak in
            self.plot_dir,
            epochs=epochs if self.epoch_profiles else "current",
            primary_metric=self.primary_metric,
            fontsize=self.fontsize,
            run=run_name(self.savepath),
            record=self.run_record,
        )
        if self.background:
            self._drawing = draw_later(draw)
        else:
            with writing(self, self.plot_dir):
                draw()

    def finish_drawing(self) -> None:
        """Wait until the figures handed to the drawing thread are on disk; raise its error if any."""
        drawing, self._drawing = self._drawing, None
        if drawing is not None:
            with writing(self, self.plot_dir):
                drawing.result()

    def close(self) -> None:
        self.save()
        self.finish_drawing()

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Continue the CSV, and delete profile PNGs of epochs ``>= initial_epoch``."""
        self.finish_drawing()
        super().resume_from_saved_state(initial_epoch)
        if not self.plot_dir.is_dir():
            return
        for file in self.plot_dir.iterdir():
            match = PROFILE_PATTERN.match(file.name)
            if match and int(match.group(1)) >= initial_epoch:
                file.unlink(missing_ok=True)


#: A shorter name for the same writer.
PlotWriter = CSVandPlottingWriter
