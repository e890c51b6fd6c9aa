"""What the TensorBoard writer draws once an epoch is complete: heatmaps, profiles, and the report.

Functions of the :class:`~delve.writers.tensorboard.TensorBoardWriter` (``writer``),
kept apart so the class stays readable. The jobs are built on the training thread from a snapshot of the writer's
values and drawn on delve's drawing thread (:func:`delve.output.canvas.draw_later`);
the report's text is logged at once, it costs nothing to lay out.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from ..output.figures import heatmap_figure, profile_figure
from ..output.plotting import draw_verdicts
from ..output.report import markdown_report
from ..output.tables import tidy_frame
from ..statistics.registry import STATISTICS, by_name
from ..verdicts.facts import report_of
from .tensorboard_tags import overview_tag, report_tag

__all__ = ["HEATMAP_HEIGHT", "PROFILE_STAT", "ImageJob", "overview_images", "log_verdicts"]

PROFILE_STAT = STATISTICS["lsat"].name
#: Inches of a heatmap's plot area, at most: the image keeps its shape in a
#: Time Series card at any depth (thinner rows, every k-th layer labelled).
HEATMAP_HEIGHT = 4.5

#: An image still to be drawn: its tag, its step and the function building its figure.
ImageJob = tuple[str, int, Callable[[], Any]]


def overview_images(writer: Any) -> list[ImageJob]:
    """Each statistic's layers-by-epochs heatmap and the saturation profile, for the epochs not yet drawn."""
    record = writer.run_record
    labels = {layer: record.label(layer) for layer in record.layers} if record is not None else {}
    widths = dict(record.widths) if record is not None else {}
    images: list[ImageJob] = []
    for (stat, mode), by_layer in writer._history.items():
        if by_name(stat) is None:
            continue
        layers = writer._layers(stat, mode)
        epochs = sorted({step for by_epoch in by_layer.values() for step in by_epoch})
        steps = [step for step in sorted(writer._epochs) if step in epochs]
        if not steps:
            continue
        if writer.heatmap_images:
            # A snapshot: the next epoch's values do not leak into this image.
            history = pd.DataFrame(
                [[by_layer[layer].get(epoch, np.nan) for epoch in epochs] for layer in layers],
                index=layers,
                columns=epochs,
            )
            build = partial(
                heatmap_figure, history, stat, mode, writer.fontsize, writer.run_name, HEATMAP_HEIGHT, labels
            )
            images.append((overview_tag(stat, "heatmap", mode), steps[-1], build))
        if stat == PROFILE_STAT and writer.profile_images:
            for step in steps:
                values = {layer: by_layer[layer][step] for layer in layers if step in by_layer[layer]}
                build = partial(
                    profile_figure, values, stat, mode, step, None, writer.fontsize, writer.run_name, widths, labels
                )
                images.append((overview_tag(stat, "profile", mode), step, build))
    return images


def log_verdicts(writer: Any) -> list[ImageJob]:
    """Log the report of the values so far as text, and return the verdict figure's job (none before saturation).

    The layers keep the order their training saturation arrived in, the
    forward order.
    """
    trained = writer._history.get((PROFILE_STAT, "train"))
    if not trained or not writer._epochs or not writer.report:
        return []
    step = max(writer._epochs)
    rows = [
        (epoch, mode, layer, stat, value)
        for (stat, mode), by_layer in writer._history.items()
        for layer, by_epoch in by_layer.items()
        for epoch, value in by_epoch.items()
    ]
    results = tidy_frame(rows)
    order = list(trained)
    record = writer.run_record
    report = report_of(results, record, order=order)
    writer._writer().add_text(report_tag("findings"), markdown_report(report, record, step), global_step=step)
    build = partial(draw_verdicts, results, record, writer.fontsize, writer.run_name, order)
    return [(report_tag("figure"), step, build)]
