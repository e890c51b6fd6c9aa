"""The CSV format: ``;``-separated, index ``epoch``, one column per logged value.

Counts (rows, rejected batches, intrinsic dimensionality) are written as
integers (``44``, not ``44.0``); :func:`read_csv` reads every column as float,
:func:`integer_columns` says which ones hold integers.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd

from ...common.files import atomic_write
from ..layout import csv_path

__all__ = ["EXACT_FLOATS", "SEPARATOR", "read_csv", "write_csv", "integer_columns"]

SEPARATOR = ";"

# ``pd.read_csv`` options that read back exactly the floats ``to_csv`` wrote.
# Before pandas 3 the default parser may be one ulp off (0.30000000000000004
# reads as 0.3), which a resumed run would then write back; pandas 3 parses
# exactly by default and deprecates the option.
EXACT_FLOATS: dict[str, str] = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a wide table (index ``epoch``) atomically.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = os.path.join(tempfile.mkdtemp(), "run.csv")
    >>> write_csv(pd.DataFrame({"loss": [0.5]}, index=pd.Index([0], name="epoch")), path)
    >>> Path(path).read_text().splitlines()
    ['epoch;loss', '0;0.5']
    """
    atomic_write(path, lambda handle: frame.to_csv(handle, sep=SEPARATOR))


def read_csv(savefile: str | os.PathLike) -> pd.DataFrame:
    """Read a run's CSV (``<savefile>.csv``) as a wide table, checking that it is one.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        When the file is not a delve CSV (unreadable, non-numeric, ...).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> _ = Path(path + ".csv").write_text("epoch;train-saturation_fc\\n0;0.5\\n")
    >>> read_csv(path)
           train-saturation_fc
    epoch
    0                      0.5
    """
    path = csv_path(savefile)
    if not path.is_file():
        raise FileNotFoundError(f"no delve results at {path} (file not found)")
    try:
        frame = pd.read_csv(path, sep=SEPARATOR, index_col=0, **EXACT_FLOATS)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(f"{path} is not a readable delve CSV: {first_line(error)}") from error
    if len(frame) == 0:
        raise ValueError(f"{path} is not a delve CSV: it holds no epoch rows")
    try:
        epochs = pd.to_numeric(frame.index)
        frame = frame.apply(pd.to_numeric)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a delve CSV: {first_line(error)}") from error
    if len(epochs) and (np.isnan(epochs).any() or (epochs != np.round(epochs)).any()):
        raise ValueError(f"{path} is not a delve CSV: the first column must hold integer epochs")
    frame.index = pd.Index(np.asarray(epochs, dtype="int64"), name="epoch")
    return frame.astype("float64")


_INTEGER = re.compile(r"^-?\d+$")


def integer_columns(savefile: str | os.PathLike) -> list[str]:
    """The columns of a run's CSV whose every filled cell is written as an integer.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> _ = Path(path + ".csv").write_text("epoch;train-rows_fc;train-saturation_fc\\n0;44;0.5\\n1;;1.0\\n")
    >>> integer_columns(path)
    ['train-rows_fc']
    """
    text = pd.read_csv(csv_path(savefile), sep=SEPARATOR, index_col=0, dtype=str, keep_default_na=False)
    return [
        str(column)
        for column in text.columns
        if any(text[column]) and all(_INTEGER.match(cell) for cell in text[column] if cell)
    ]


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for one-line reports."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
