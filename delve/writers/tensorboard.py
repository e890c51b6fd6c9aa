"""TensorBoard output through tensorboardX: one run per tracker, one section per statistic."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..figures import embedding_figure, figure_to_rgb, profile_figure
from ..layout import tensorboard_dir
from ..metrics import eigenvalues
from ..naming import RunRecord, classify
from .base import AbstractWriter, writing

__all__ = ["TensorBoardWriter", "tensorboard_tag"]

logger = logging.getLogger("delve")

PROFILE_STAT = "saturation"
SPECTRUM_SECTION = "covariance-eigenvalues"


def tensorboard_tag(name: str, record: RunRecord | None = None) -> str:
    """The TensorBoard tag of a logged value: ``<stat>/<mode>/<layer>``.

    TensorBoard groups tags by their first component, so each statistic gets
    its own dashboard section. Layer averages become ``<stat>/<mode>/average``;
    other names (user scalars) are kept as they are. With the tracker's
    ``record``, only the values it describes are split (see
    :func:`delve.naming.classify`).

    Examples
    --------
    >>> tensorboard_tag("train-saturation_features-0")
    'saturation/train/features-0'
    >>> tensorboard_tag("eval-average-saturation")
    'saturation/eval/average'
    >>> tensorboard_tag("test_accuracy")
    'test_accuracy'
    """
    mode, layer, stat = classify(name, record)
    if mode is None:
        return name
    if layer is None:
        return f"{stat[len('average-') :]}/{mode}/average"
    return f"{stat}/{mode}/{layer}"


class TensorBoardWriter(AbstractWriter):
    """Log to TensorBoard with a tensorboardX ``SummaryWriter``.

    What it writes, with ``global_step`` = epoch:

    * scalars under ``<stat>/<mode>/<layer>`` (one dashboard section per
      statistic); user scalars under their own names;
    * a custom-scalars layout: per statistic, one multi-line chart per mode
      holding every layer;
    * each epoch, the per-layer saturation profile as the image
      ``saturation-profile/<mode>``;
    * stat ``cov``: the eigenvalue spectrum as the histogram
      ``covariance-eigenvalues/<mode>/<layer>`` (a matrix is no scalar);
    * stat ``embed``: the sampled outputs on the two leading eigenvectors as
      the scatter image ``embedded-sample/<mode>/<layer>``.

    Everything goes to ONE run folder, ``<savepath>`` (see
    :mod:`delve.writers.layout`), so ``tensorboard --logdir <parent>`` shows one
    run per tracker. The folder is created at the first value. A resumed run
    (``initial_epoch=k``) appends a new event file to the same folder, telling
    TensorBoard to discard the earlier steps ``>= k``.

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
    flush_secs : int
        Passed to ``SummaryWriter``; :meth:`save` flushes every epoch anyway.

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
        flush_secs: int = 120,
        fontsize: float = 11,
        **kwargs: Any,
    ) -> None:
        super().__init__(savepath)
        self.logdir = Path(logdir) if logdir is not None else tensorboard_dir(self.savepath)
        self.profile_images = bool(profile_images)
        self.flush_secs = int(flush_secs)
        self.fontsize = fontsize
        self._summary_writer: Any = None
        self._purge_step: int | None = None
        self._charts: dict[tuple[str, str], None] = {}
        self._charts_written = 0
        self._profiles: dict[tuple[str, int], dict[str, float]] = {}
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

    # ----------------------------------------------------------- interface
    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        step = self._epoch(epoch)
        value = float(value)
        with writing(self, self.logdir):
            self._writer().add_scalar(tensorboard_tag(name, self.run_record), value, global_step=step)
        mode, layer, stat = classify(name, self.run_record)
        if mode is not None and layer is not None:
            self._charts.setdefault((stat, mode))
            if stat == PROFILE_STAT and self.profile_images:
                self._profiles.setdefault((mode, step), {})[layer] = value

    def add_array(self, name: str, value: np.ndarray, epoch: int | None = None) -> None:
        step = self._epoch(epoch)
        mode, layer, stat = classify(name, self.run_record)
        array = np.asarray(value)
        if mode is None or not layer or not array.size or array.ndim != 2:
            logger.debug("TensorBoardWriter does not log %s (array of shape %s)", name, array.shape)
            return
        with writing(self, self.logdir):
            if array.shape[0] == array.shape[1]:
                spectrum = eigenvalues(torch.from_numpy(np.asarray(array, dtype=np.float64))).numpy()
                self._writer().add_histogram(f"{SPECTRUM_SECTION}/{mode}/{layer}", spectrum, global_step=step)
            elif array.shape[1] <= 2:
                figure = embedding_figure(array, f"{stat} ({mode}), {layer}, epoch {step}", fontsize=self.fontsize)
                image = figure_to_rgb(figure)
                self._writer().add_image(f"{stat}/{mode}/{layer}", image, global_step=step, dataformats="HWC")

    def _write_layout(self) -> None:
        if len(self._charts) == self._charts_written:
            return
        # TensorBoard shows the last layout written in a run, so it is
        # rewritten in full whenever a statistic or mode appears.
        layout_spec: dict[str, dict[str, list]] = {}
        for stat, mode in self._charts:
            layout_spec.setdefault(stat, {})[f"{stat} ({mode}), all layers"] = [
                "Multiline",
                [f"^{re.escape(stat)}/{re.escape(mode)}/"],
            ]
        self._writer().add_custom_scalars(layout_spec)
        self._charts_written = len(self._charts)

    def _write_profiles(self) -> None:
        for (mode, step), values in self._profiles.items():
            figure = profile_figure(values, PROFILE_STAT, mode, step, fontsize=self.fontsize)
            image = figure_to_rgb(figure)
            self._writer().add_image(f"{PROFILE_STAT}-profile/{mode}", image, global_step=step, dataformats="HWC")
        self._profiles.clear()

    def save(self) -> None:
        if self._summary_writer is None and not self._charts and not self._profiles:
            return
        with writing(self, self.logdir):
            self._write_layout()
            self._write_profiles()
            self._writer().flush()

    def close(self) -> None:
        self.save()
        if self._summary_writer is not None:
            with writing(self, self.logdir):
                self._summary_writer.close()
            self._summary_writer = None

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Steps ``>= initial_epoch`` of the earlier run are hidden (purged) in TensorBoard."""
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
                    if epoch is not None:
                        kwargs.setdefault("global_step", int(epoch))
                    with writing(self, self.logdir):
                        return getattr(self._writer(), name)(*args, **kwargs)

                return forward
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
