"""Console output: a compact table per epoch, and the run's report at the end, printed through ``tqdm.write``."""

from __future__ import annotations

import sys
from typing import IO, Any

import pandas as pd
from tqdm import tqdm

from ..output.report import format_report
from ..output.summary import format_summary
from ..output.tables import tidy
from ..verdicts.facts import report_of
from .base import AbstractWriter

__all__ = ["PrintWriter"]


class PrintWriter(AbstractWriter):
    """Print each epoch's values as a table: layers by ``"<mode> <statistic>"``.

    User scalars (loss, accuracy) follow on one line. At :meth:`close`, the
    report of the run (:func:`delve.output.report.format_report`: the layers,
    then the findings in words). Printing goes through ``tqdm.write``, so
    running progress bars are redrawn below the table instead of being
    broken up. Arrays (``cov``, ``embed``) are not printed.

    Parameters
    ----------
    savepath : str
        Unused; accepted so every writer is built alike.
    file : file object, optional
        Where to print (default ``sys.stdout``).
    report : bool
        Print the report at :meth:`close` (default).

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

    def __init__(self, savepath: str = "", file: IO[str] | None = None, report: bool = True, **kwargs: Any) -> None:
        super().__init__(savepath)
        self.file = file
        self.report = bool(report)
        self._values: dict[int, dict[str, float]] = {}
        self._printed: list[pd.DataFrame] = []  # every epoch's tidy values, for the report

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        epoch = max(self._values, default=0) if epoch is None else int(epoch)
        self._values.setdefault(epoch, {})[name] = float(value)

    def save(self) -> None:
        for epoch, values in sorted(self._values.items()):
            frame = pd.DataFrame([values], index=pd.Index([epoch], name="epoch"))
            values = tidy(frame, self.run_record)
            self._printed.append(values)
            tqdm.write(format_summary(values, record=self.run_record), file=self.file or sys.stdout)
        self._values.clear()

    def close(self) -> None:
        self.save()
        results = pd.concat(self._printed, ignore_index=True) if self._printed else None
        self._printed = []
        if not self.report or results is None or not results["layer"].notna().any():
            return
        record = self.run_record
        epoch = int(results["epoch"].max())
        tqdm.write(format_report(report_of(results, record), record, epoch), file=self.file or sys.stdout)
