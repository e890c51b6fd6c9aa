"""Console output: a compact table per epoch, printed through ``tqdm.write``."""

from __future__ import annotations

import sys
from typing import IO, Any

import pandas as pd
from tqdm import tqdm

from ..output.summary import format_summary
from ..output.tables import tidy
from .base import AbstractWriter

__all__ = ["PrintWriter"]


class PrintWriter(AbstractWriter):
    """Print each epoch's values as a table: layers by ``"<mode> <statistic>"``.

    User scalars (loss, accuracy) follow on one line. Printing goes through
    ``tqdm.write``, so running progress bars are redrawn below the table
    instead of being broken up. Arrays (``cov``, ``embed``) are not printed.

    Parameters
    ----------
    savepath : str
        Unused; accepted so every writer is built alike.
    file : file object, optional
        Where to print (default ``sys.stdout``).

    Examples
    --------
    >>> writer = PrintWriter()
    >>> writer.add_scalar("train-saturation_fc", 0.5, epoch=1)
    >>> writer.add_scalar("test_accuracy", 0.75, epoch=1)
    >>> writer.save()
    epoch 1
    layer  train lsat
    fc            0.5
    test_accuracy = 0.75
    """

    writes_files = False

    def __init__(self, savepath: str = "", file: IO[str] | None = None, **kwargs: Any) -> None:
        super().__init__(savepath)
        self.file = file
        self._values: dict[int, dict[str, float]] = {}

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        epoch = max(self._values, default=0) if epoch is None else int(epoch)
        self._values.setdefault(epoch, {})[name] = float(value)

    def save(self) -> None:
        for epoch, values in sorted(self._values.items()):
            frame = pd.DataFrame([values], index=pd.Index([epoch], name="epoch"))
            text = format_summary(tidy(frame, self.run_record), record=self.run_record)
            tqdm.write(text, file=self.file or sys.stdout)
        self._values.clear()
