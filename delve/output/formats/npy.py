"""The NPY format: one folder per logged value, one ``.npy`` file per epoch, and ``counters.json``.

Layout (``savefile="runs/vgg"``)::

    runs/vgg/npy/train-saturation_fc/epoch_00000.npy          0-d float64
    runs/vgg/npy/train-covariance-matrix_fc/epoch_00000.npy   (d, d) float64
    runs/vgg/npy/counters.json

``counters.json`` maps each folder to its value name (folder names are
sanitised and may differ from it) and lists the epochs written; it also holds
the run record (layers and statistic names). Nothing is pickled: every file
loads with ``np.load(path, allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...common.files import atomic_path, atomic_write
from ...common.naming import RunRecord, safe_filename
from ..layout import COUNTERS_FILE, epoch_filename, epoch_of_filename
from .csv import first_line

__all__ = [
    "FORMAT_VERSION",
    "Counters",
    "save_array",
    "load_array",
    "read_counters",
    "write_counters",
    "find_npy_dir",
    "index_values",
    "value_file",
]

FORMAT_VERSION = 1


@dataclass
class Counters:
    """What ``counters.json`` holds.

    Attributes
    ----------
    values : dict
        Folder name -> ``{"name": value name, "epochs": sorted epochs on disk}``.
    record : RunRecord or None
        The run's layers and statistic names, when the tracker gave them.
    """

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    record: RunRecord | None = None


def save_array(path: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` file atomically, without pickling."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_array(path: Path) -> np.ndarray:
    """Read one ``.npy`` file; ``ValueError`` naming the file when it cannot be read."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {first_line(error)}") from error


def write_counters(directory: Path, counters: Counters) -> None:
    """Write ``counters.json`` atomically.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_counters(folder, Counters({"a_b": {"name": "a/b", "epochs": [0, 1]}}))
    >>> read_counters(folder).values["a_b"]["name"]
    'a/b'
    """
    content: dict[str, Any] = {"format": FORMAT_VERSION, "values": counters.values}
    if counters.record is not None:
        content["record"] = counters.record.to_dict()
    atomic_write(directory / COUNTERS_FILE, lambda handle: json.dump(content, handle, indent=1, sort_keys=True))


def read_counters(directory: Path) -> Counters | None:
    """``counters.json`` of an NPY folder; ``None`` when there is none.

    Folder names are sanitised again on reading, so a tampered file cannot
    point outside the folder.

    Raises
    ------
    ValueError
        When the file exists but is not a delve counters file.
    """
    path = directory / COUNTERS_FILE
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        values = {
            safe_filename(str(folder)): {"name": str(entry["name"]), "epochs": sorted(int(e) for e in entry["epochs"])}
            for folder, entry in content["values"].items()
        }
        record = RunRecord.from_dict(content["record"]) if "record" in content else None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a delve counters file: {first_line(error)}") from error
    return Counters(values, record)


def find_npy_dir(path: str | os.PathLike) -> Path:
    """The NPY folder itself, also when the run folder holding it (``<savefile>``) is given."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"no NPY results at {directory} (folder not found)")
    if not (directory / COUNTERS_FILE).is_file() and (directory / "npy" / COUNTERS_FILE).is_file():
        return directory / "npy"
    return directory


def index_values(npy_dir: str | os.PathLike) -> tuple[dict[str, dict[int, Path]], RunRecord | None]:
    """``{value name: {epoch: file}}`` of an NPY folder, and its run record.

    Names come from ``counters.json`` when present, else from the folders.
    """
    directory = find_npy_dir(npy_dir)
    counters = read_counters(directory)
    names = {folder: entry["name"] for folder, entry in counters.values.items()} if counters else {}
    index: dict[str, dict[int, Path]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        files = {}
        for file in folder.iterdir():
            epoch = epoch_of_filename(file.name)
            if epoch is not None:
                files[epoch] = file
        if files:
            index[names.get(folder.name, folder.name)] = dict(sorted(files.items()))
    return index, counters.record if counters else None


def value_file(directory: Path, folder: str, epoch: int) -> Path:
    """Path of one epoch's file of a value folder."""
    return directory / folder / epoch_filename(epoch)
