"""A tracker's run: its epochs, its writers, its savefile and the record of what it logs.

:class:`RunWriting` is the tracker's writing side, apart from its recording
(:mod:`delve.tracking.recording`): the epoch the next values belong to, the
writers built from ``save_to`` (none on ranks that do not write), the guard
that keeps one open tracker per savefile and earlier runs from being written
over, the run record (layers, statistic names, widths, facts), the values
logged so far (for ``tracker.report()``), the user's scalars and the other
``add_*`` calls forwarded to the writers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..common import ranks
from ..common.naming import RunRecord
from ..output.tables import tidy_frame
from ..statistics.epoch import describe_run
from ..writers.registry import build_writer
from .parameters import TrackerConfig
from .savefiles import SavefileGuard

__all__ = ["RunWriting"]

logger = logging.getLogger("delve")


class RunWriting:
    """The writing side of a tracker (see the module docstring).

    Parameters
    ----------
    owner : object
        The tracker (it holds the savefile while open).
    config : TrackerConfig
        The tracker's validated arguments.
    layers : list of str
        The tracked layers' names.
    descriptions : mapping of str -> str
        Each layer's class and shape, e.g. ``Linear 256->256``.
    facts : callable, optional
        Returns each layer's facts for the record (:mod:`delve.verdicts.facts`).
    """

    def __init__(
        self,
        owner: Any,
        config: TrackerConfig,
        layers: list[str],
        descriptions: Mapping[str, str],
        facts: Callable[[], Mapping[str, Mapping[str, Any]]] = dict,
    ) -> None:
        self.config = config
        self.layers = layers
        self.descriptions = dict(descriptions)
        self.facts = facts
        self.widths: dict[str, int] = {}  # each layer's d, from its first recorded forward pass
        self.history: list[tuple[int, str, float]] = []  # (epoch, name, value) of every scalar value logged
        self.epoch = config.initial_epoch
        self.closed = False
        # Ranks other than write_rank build no writer at all, so they create no files.
        self.is_writer = config.write_rank is None or ranks.get_rank(config.process_group) == config.write_rank
        writing = not config.nosave and self.is_writer
        self.writer = build_writer(config.save_to if writing else (), config.savefile, config.writer_args)
        # One open tracker per savefile, and no earlier run written over unless continued.
        self.savefile = SavefileGuard(owner, config.savefile, self.writer.writers, config.initial_epoch > 0)
        self.writer.record_run(self.record)
        if config.initial_epoch > 0:
            self.writer.resume_from_saved_state(config.initial_epoch)
        elif config.append and (following := self.savefile.append()) is not None:
            self.epoch = following
            self.writer.resume_from_saved_state(following)

    @property
    def record(self) -> RunRecord:
        """What the tracker logs: its layers, statistic names, widths, descriptions and facts."""
        config = self.config
        record = describe_run(self.layers, config.stats, config.average_sat)
        widths = {name: self.widths[name] for name in self.layers if name in self.widths}
        return replace(record, widths=widths, descriptions=self.descriptions, facts=self.facts())

    def logged(self) -> pd.DataFrame:
        """The tidy table of the scalar values this tracker logged (in this process), as a run read back gives it."""
        record = self.record
        return tidy_frame([(epoch, *record.classify(name), value) for epoch, name, value in self.history])

    def check_open(self, call: str) -> None:
        """Refuse a recording call on a closed tracker, and writing over an earlier run (checked once)."""
        if self.closed:
            raise RuntimeError(
                f"this SaturationTracker ({self.config.savefile!r}) is closed: {call} after close() would record "
                "nothing (close() removed its hooks and closed its writers); create a new tracker to go on"
            )
        self.savefile.before_writing()

    def write_epoch(self, values: Mapping[str, Any], save: bool) -> int:
        """Give an epoch's values to the writers and move on to the next epoch; returns the epoch written."""
        epoch = self.epoch
        record = self.record
        if record != self.writer.run_record:  # the first epoch brings the layers' widths
            self.writer.record_run(record)
        self.history += [(epoch, name, float(value)) for name, value in values.items() if _is_scalar(value)]
        try:
            self.writer.write_epoch(values, epoch, save)
        finally:
            self.epoch += 1
        logger.info("delve epoch %d: %d values logged", epoch, len(values))
        return epoch

    def add_scalar(self, name: str, value: Any, **kwargs: Any) -> None:
        """A user scalar in the current epoch's row."""
        self.check_open("add_scalar()")
        self.writer.add_scalar(name, _to_python(value), self.epoch, **kwargs)

    def add_scalars(self, prefix: str, values: Mapping[str, Any], **kwargs: Any) -> None:
        """User scalars named ``prefix + key`` in the current epoch's row."""
        self.check_open("add_scalars()")
        self.writer.add_scalars(prefix, {k: _to_python(v) for k, v in values.items()}, self.epoch, **kwargs)

    def forwarded(self, name: str) -> Callable[..., None] | None:
        """A writer's own ``add_*`` call (``add_image``...) at the current epoch, or ``None`` when none has it."""
        forward = self.writer.forwarded(name, self.epoch)
        if forward is None:
            return None

        def checked(*args: Any, **kwargs: Any) -> None:
            self.check_open(f"{name}()")
            forward(*args, **kwargs)

        return checked

    def continue_at(self, epoch: int) -> None:
        """A checkpoint of ``epoch`` continues the run: the writers resume there, keeping the rows on disk."""
        self.savefile.continues = True
        if not self.writer.wrote and epoch > 0 and self.writer.resumed_at != epoch:
            self.writer.resume_from_saved_state(epoch)
        self.epoch = epoch

    def close(self, owner: Any) -> None:
        """Close the writers and give the savefile back."""
        self.closed = True
        try:
            self.writer.close()
        finally:
            self.savefile.release(owner)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, np.ndarray | torch.Tensor) or np.ndim(value) == 0


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().numpy()
    return value
