"""CSV output: ``<savepath>.csv``, ``;``-separated, one row per epoch, and the run record beside it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..common.naming import RunRecord
from ..output.formats.csv import integer_columns, read_csv, write_csv
from ..output.formats.record import write_record
from ..output.layout import csv_path, record_path
from .base import AbstractWriter, WriterError, writing

__all__ = ["CSVWriter"]


class CSVWriter(AbstractWriter):
    """Write every scalar to ``<savepath>.csv``.

    The index column ``epoch`` holds the epoch; each logged value has a column,
    in the order values first arrived (for the tracker's statistics, the
    layers' forward order). A column that appears only in later epochs (a
    layer first seen in epoch 3, a scalar logged once) is empty (NaN) in the
    other rows. A column whose every value arrived as an integer (the counts:
    ``rows``, ``nonfinite-batches``, ``intrinsic-dimensionality``) is written
    as integers. The file is rewritten atomically on every :meth:`save`, so a
    crash leaves the previous epoch's complete file. Arrays (``cov``,
    ``embed``) are not written; use the NPY writer for them. Beside the CSV,
    ``<savepath>.run.json`` records the tracker's layers and statistic names
    (when a tracker gave them), so that reading the run back tells its values
    from user scalars.

    Parameters
    ----------
    savepath : str
        Path prefix; the file is ``savepath + ".csv"``.

    Examples
    --------
    >>> import os, tempfile, pandas as pd
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> writer = CSVWriter(path)
    >>> writer.add_scalar("train-saturation_fc", 0.25, epoch=0)
    >>> writer.save()
    >>> float(pd.read_csv(path + ".csv", sep=";", index_col=0).loc[0, "train-saturation_fc"])
    0.25
    """

    def __init__(self, savepath: str, **kwargs: Any) -> None:
        super().__init__(savepath)
        self.path = str(csv_path(self.savepath))
        self._rows: dict[int, dict[str, float]] = {}
        self._columns: dict[str, None] = {}
        # Column -> whether every value so far was an integer: those are written without ".0".
        self._integers: dict[str, bool] = {}
        self._written_record: RunRecord | None = None

    def _resolve_epoch(self, epoch: int | None) -> int:
        return max(self._rows, default=0) if epoch is None else int(epoch)

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        epoch = self._resolve_epoch(epoch)
        self._rows.setdefault(epoch, {})[name] = _as_float(value)
        self._columns.setdefault(name)
        self._integers[name] = self._integers.get(name, True) and _is_integer(value)

    def dataframe(self) -> pd.DataFrame:
        """Everything recorded so far, one row per epoch."""
        frame = pd.DataFrame.from_dict(self._rows, orient="index", columns=list(self._columns), dtype="float64")
        frame.index = frame.index.astype("int64")
        frame.index.name = "epoch"
        return frame.sort_index()

    def save(self) -> None:
        if not self._rows and not self._columns:
            return  # nothing logged yet: leave no empty file behind
        frame = self.dataframe()
        for column, integer in self._integers.items():
            if integer:
                frame[column] = frame[column].astype("Int64")  # empty cells stay empty
        with writing(self, self.path):
            write_csv(frame, self.path)
        if self.run_record is not None and self._written_record != self.run_record:
            with writing(self, record_path(self.savepath)):
                write_record(self.savepath, self.run_record)
            self._written_record = self.run_record

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        try:
            frame = read_csv(self.path)
        except FileNotFoundError:
            return
        except ValueError as error:
            raise WriterError(f"CSVWriter cannot resume from {self.path}: {error}") from error
        frame = frame[frame.index < initial_epoch]
        integers = set(integer_columns(self.path))
        for column in frame.columns:
            self._columns.setdefault(column)
            self._integers[column] = column in integers
        for epoch, row in frame.iterrows():
            self._rows[int(epoch)] = {k: v for k, v in row.items() if not _is_nan(v)}


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"CSV values must be scalars, got {type(value).__name__}") from error


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
