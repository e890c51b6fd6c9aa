"""TensorBoard output through tensorboardX: saturation first, readable at any number of layers.

Tags and the custom-scalars layout are described in
:mod:`delve.writers.tensorboard_tags`.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.naming import classify
from ..output.figures import draw_later, embedding_figure, figure_to_rgb
from ..output.layout import tensorboard_dir
from ..statistics.registry import by_name
from ..statistics.spectra import eigenvalues
from .base import AbstractWriter, writing
from .tensorboard_images import HEATMAP_HEIGHT, PROFILE_STAT, ImageJob, log_verdicts, overview_images
from .tensorboard_tags import custom_scalars_layout, layer_tag, overview_tag, tensorboard_tag

__all__ = ["TensorBoardWriter", "tensorboard_tag", "HEATMAP_HEIGHT", "PROFILE_STAT"]

logger = logging.getLogger("delve")

SPECTRUM_LABEL = "covariance-eigenvalues"


class TensorBoardWriter(AbstractWriter):
    """Log to TensorBoard with a tensorboardX ``SummaryWriter``.

    What it writes, with ``global_step`` = epoch (tags: see
    :mod:`delve.writers.tensorboard_tags`; ``01-saturation`` sorts first):

    * per layer, scalars ``<NN>-<stat>-by-layer/<mode>/<layer>``; user
      scalars under their own names;
    * per statistic and mode, the layer average ``<NN>-<stat>/average/<mode>``
      for statistics averaged over layers (saturation), taken here when the
      tracker does not log it (``average_sat=False``);
    * per statistic and mode, each epoch, the image
      ``<NN>-<stat>/heatmap/<mode>``: layers (rows, network order) by epochs,
      bounded statistics on their fixed colour scale (saturation: 0..1);
    * the saturation profile image ``01-saturation/profile/<mode>`` (one bar
      per layer, fixed 0..1 axis);
    * the report each epoch (:meth:`~delve.SaturationTracker.report`): as
      text, ``00-report/findings`` (the table and the findings in words), and
      as the verdict figure, ``00-report/figure``; each epoch, not only at
      the end, because TensorBoard is where a run is watched while it can
      still be changed, and a run stopped early still has its last report;
    * a custom-scalars layout: one category per statistic in registry order,
      saturation first and open, per mode a chart of the layer average and
      charts of at most eight consecutive layers;
    * stat ``cov``: the eigenvalue spectrum as the histogram
      ``03-covariance-eigenvalues-by-layer/<mode>/<layer>``;
    * stat ``embed``: the sampled outputs on the two leading eigenvectors as
      the scatter image ``07-embedded-sample-by-layer/<mode>/<layer>``.

    Image titles start with the run's name (the log folder's name), so a
    downloaded PNG says where it came from. Images are drawn on delve's
    drawing thread (see :func:`delve.output.figures.draw_later`) while training goes
    on; every other call of the writer first waits for them, so the event
    file's order is the same as when drawn in place, and :meth:`close` returns
    with everything written and flushed.

    Everything goes to ONE run folder, ``<savepath>`` (see
    :mod:`delve.output.layout`), so ``tensorboard --logdir <parent>`` shows one run
    per tracker. The folder is created at the first value. A resumed run
    (``initial_epoch=k``) appends a new event file to the same folder, telling
    TensorBoard to discard the earlier steps ``>= k``; its heatmaps start at
    epoch ``k``.

    Other ``add_*`` calls of ``SummaryWriter`` (``add_image``, ``add_text``,
    ...) are available on the writer, and through the tracker, with
    ``epoch`` as ``global_step``.

    Parameters
    ----------
    savepath : str
        The run's path prefix.
    logdir : str, optional
        Use this folder instead of ``<savepath>``.
    profile_images : bool
        Log the saturation profile image each epoch.
    heatmap_images : bool
        Log the layers-by-epochs image of each statistic and mode each epoch.
    report : bool
        Log the report (text and verdict figure) each epoch.
    flush_secs : int
        Passed to ``SummaryWriter``; :meth:`save` flushes every epoch anyway.
    fontsize : float
        Base font size of the images.
    background : bool
        Draw images on the drawing thread (default); ``False`` draws them
        before :meth:`save` returns.

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> writer = TensorBoardWriter(run, profile_images=False)
    >>> writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
    >>> writer.close()
    >>> any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    True
    """

    def __init__(
        self,
        savepath: str,
        logdir: str | None = None,
        profile_images: bool = True,
        heatmap_images: bool = True,
        report: bool = True,
        flush_secs: int = 120,
        fontsize: float = 11,
        background: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(savepath)
        self.logdir = Path(logdir) if logdir is not None else tensorboard_dir(self.savepath)
        self.run_name = self.logdir.name
        self.profile_images = bool(profile_images)
        self.heatmap_images = bool(heatmap_images)
        self.report = bool(report)
        self.flush_secs = int(flush_secs)
        self.fontsize = fontsize
        self.background = bool(background)
        self._summary_writer: Any = None
        self._purge_step: int | None = None
        # (stat, mode) -> layer -> epoch -> value, layers in order of arrival.
        self._history: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
        self._averages: set[tuple[str, str]] = set()
        self._logged_averages: set[tuple[str, str, int]] = set()
        self._layout_written: Any = None
        self._epochs: set[int] = set()
        self._images: list[ImageJob] = []
        self._drawing: Future[None] | None = None
        self._last_epoch = 0

    # ------------------------------------------------------------ internals
    def _writer(self) -> Any:
        if self._summary_writer is None:
            from tensorboardX import SummaryWriter

            with writing(self, self.logdir):
                self.logdir.mkdir(parents=True, exist_ok=True)
                # A unique suffix: event files are named by the second and host,
                # so a resumed run started within the same second would
                # otherwise overwrite the first one's file.
                self._summary_writer = SummaryWriter(
                    logdir=str(self.logdir),
                    purge_step=self._purge_step,
                    flush_secs=self.flush_secs,
                    filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}",
                )
        return self._summary_writer

    def _epoch(self, epoch: int | None) -> int:
        if epoch is not None:
            self._last_epoch = int(epoch)
        return self._last_epoch

    def _layers(self, stat: str, mode: str) -> list[str]:
        """The layers of ``stat`` in network order (the run record's), else in order of arrival."""
        seen = self._history.get((stat, mode), {})
        if self.run_record is not None:
            order = {layer: index for index, layer in enumerate(self.run_record.layers)}
            return sorted(seen, key=lambda layer: order.get(layer, len(order)))
        return list(seen)

    # ----------------------------------------------------------- interface
    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        self.finish_drawing()
        step = self._epoch(epoch)
        value = float(value)
        if math.isfinite(value):
            with writing(self, self.logdir):
                self._writer().add_scalar(tensorboard_tag(name, self.run_record), value, global_step=step)
        # else a missing value (too few rows, no probe): a gap in the curve, not a point nor tensorboardX's NaN warning
        mode, layer, stat = classify(name, self.run_record)
        if mode is None:
            return
        self._epochs.add(step)
        if layer is None:
            statistic = by_name(stat)
            base = statistic.name if statistic is not None else stat[len("average-") :]
            self._averages.add((base, mode))
            self._logged_averages.add((base, mode, step))
        else:
            self._history.setdefault((stat, mode), {}).setdefault(layer, {})[step] = value

    def add_array(self, name: str, value: np.ndarray, epoch: int | None = None) -> None:
        self.finish_drawing()
        step = self._epoch(epoch)
        mode, layer, stat = classify(name, self.run_record)
        array = np.asarray(value)
        if mode is None or not layer or not array.size or array.ndim != 2:
            logger.debug("TensorBoardWriter does not log %s (array of shape %s)", name, array.shape)
            return
        if array.shape[0] == array.shape[1]:
            if not np.isfinite(array).all():
                # A covariance too few rows support is logged as missing: it has no spectrum to show.
                logger.debug("TensorBoardWriter does not log %s (missing values)", name)
                return
            spectrum = eigenvalues(torch.from_numpy(np.asarray(array, dtype=np.float64))).numpy()
            with writing(self, self.logdir):
                tag = layer_tag(stat, mode, layer, SPECTRUM_LABEL)
                self._writer().add_histogram(tag, spectrum, global_step=step)
        elif array.shape[1] <= 2:
            title = f"{self.run_name}: {stat} ({mode}), {layer}, epoch {step}"
            build = partial(embedding_figure, array.copy(), title, fontsize=self.fontsize)
            self._images.append((layer_tag(stat, mode, layer), step, build))

    def _log_averages(self) -> None:
        """The layer average of averaged statistics for epochs where the tracker logged none."""
        for (stat, mode), layers in self._history.items():
            statistic = by_name(stat)
            if statistic is None or not statistic.averaged:
                continue
            self._averages.add((stat, mode))
            for step in sorted(self._epochs):
                values = [by_epoch[step] for by_epoch in layers.values() if step in by_epoch]
                values = [value for value in values if math.isfinite(value)]
                if values and (stat, mode, step) not in self._logged_averages:
                    # The same mean as the tracker's average_sat=True value: over the layers with a value.
                    self._writer().add_scalar(overview_tag(stat, "average", mode), float(np.mean(values)), step)
                    self._logged_averages.add((stat, mode, step))

    def _write_layout(self) -> None:
        layers = {key: self._layers(*key) for key in self._history}
        layout = custom_scalars_layout(layers, self._averages)
        if layout == self._layout_written:
            return
        # TensorBoard shows the last layout written in a run, so it is
        # rewritten in full whenever a statistic, mode or layer appears.
        from tensorboardX.summary import custom_scalars

        # tensorboardX builds the summary (tag, plugin metadata) from a dict,
        # which cannot say that a category starts closed: its layout is
        # replaced by ours. Steps only grow, so TensorBoard keeps the last one.
        summary = custom_scalars({})
        summary.value[0].tensor.string_val[0] = layout.SerializeToString()
        self._writer()._get_file_writer().add_summary(summary, self._last_epoch)
        self._layout_written = layout

    def _draw(self, images: list[ImageJob]) -> None:
        """Render and log ``images`` in order, then flush (on the drawing thread, or in place)."""
        writer = self._writer()
        for tag, step, build in images:
            writer.add_image(tag, figure_to_rgb(build()), global_step=step, dataformats="HWC")
        writer.flush()

    def save(self) -> None:
        self.finish_drawing()
        if self._summary_writer is None and not self._history and not self._images:
            return
        with writing(self, self.logdir):
            self._log_averages()
            self._write_layout()
            self._images += overview_images(self) + log_verdicts(self)
            self._epochs.clear()
            self._writer().flush()
            images, self._images = self._images, []
            if not images:
                return
            if self.background:
                self._drawing = draw_later(partial(self._draw, images))
            else:
                self._draw(images)

    def finish_drawing(self) -> None:
        """Wait until the images handed to the drawing thread are logged; raise its error if any."""
        drawing, self._drawing = self._drawing, None
        if drawing is not None:
            with writing(self, self.logdir):
                drawing.result()

    def close(self) -> None:
        self.save()
        self.finish_drawing()
        if self._summary_writer is not None:
            with writing(self, self.logdir):
                self._summary_writer.close()
            self._summary_writer = None

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Steps ``>= initial_epoch`` of the earlier run are hidden (purged) in TensorBoard."""
        self.finish_drawing()
        self._purge_step = int(initial_epoch)
        self._last_epoch = int(initial_epoch)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # add_image, add_text, add_figure, ... of SummaryWriter, with epoch as
        # global_step. add_scalars is deliberately not forwarded: tensorboardX
        # makes one run folder per key for it.
        if name.startswith("add_") and name != "add_scalars":
            from tensorboardX import SummaryWriter

            if callable(getattr(SummaryWriter, name, None)):

                def forward(*args: Any, epoch: int | None = None, **kwargs: Any) -> Any:
                    self.finish_drawing()
                    if epoch is not None:
                        kwargs.setdefault("global_step", int(epoch))
                    with writing(self, self.logdir):
                        return getattr(self._writer(), name)(*args, **kwargs)

                return forward
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
