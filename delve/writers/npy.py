"""NPY output: one folder per logged value, one ``.npy`` file per epoch."""

from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path, atomic_write
from ..naming import safe_filename
from . import layout
from .base import AbstractWriter, WriterError, writing

__all__ = ["NPYWriter"]

FORMAT_VERSION = 1


class NPYWriter(AbstractWriter):
    """Save every value, scalars and arrays, as NumPy files.

    Layout (``savepath="runs/vgg"``)::

        runs/vgg/npy/train-saturation_fc/epoch_00000.npy     0-d float64
        runs/vgg/npy/train-covariance-matrix_fc/epoch_00000.npy   (d, d) float64
        runs/vgg/npy/counters.json

    Folder names are the value names passed through
    :func:`delve.naming.safe_filename`; ``counters.json`` maps each folder to
    its value name and records the epochs written, so a run can be read back
    (:func:`delve.results.read_npy_dir`) and resumed. Nothing is pickled:
    every file loads with ``np.load(path, allow_pickle=False)``. Files are
    written atomically at :meth:`save`.

    Parameters
    ----------
    savepath : str
        The run's path prefix.
    zip : bool
        At :meth:`close`, also write ``<savepath>/npy.zip`` holding exactly
        the NPY folder (paths inside start with ``npy/``).
    directory : str, optional
        Use this folder instead of ``<savepath>/npy``.

    Examples
    --------
    >>> import os, tempfile
    >>> run = os.path.join(tempfile.mkdtemp(), "run")
    >>> writer = NPYWriter(run)
    >>> writer.add_scalar("train-saturation_fc", 0.5, epoch=0)
    >>> writer.close()
    >>> float(np.load(os.path.join(run, "npy", "train-saturation_fc", "epoch_00000.npy"), allow_pickle=False))
    0.5
    """

    def __init__(self, savepath: str, zip: bool = False, directory: str | None = None, **kwargs: Any) -> None:
        super().__init__(savepath)
        self.directory = Path(directory) if directory is not None else layout.npy_dir(self.savepath)
        self.zip = bool(zip)
        self._pending: dict[tuple[str, int], np.ndarray] = {}
        # folder -> {"name": value name, "epochs": sorted epochs on disk}
        self._counters: dict[str, dict[str, Any]] = {}
        self._folders: dict[str, str] = {}
        self._last_epoch = 0

    @property
    def zip_path(self) -> Path:
        """Where ``zip=True`` puts the archive."""
        return self.directory.with_name(self.directory.name + ".zip")

    def _folder(self, name: str) -> str:
        folder = self._folders.get(name)
        if folder is None:
            base = folder = safe_filename(name)
            suffix = 1
            # Two names that sanitise alike (``a/b`` and ``a_b``) must not share a folder.
            while folder in self._counters and self._counters[folder]["name"] != name:
                suffix += 1
                folder = f"{base}+{suffix}"
            self._counters.setdefault(folder, {"name": name, "epochs": []})
            self._folders[name] = folder
        return folder

    def _add(self, name: str, value: Any, epoch: int | None) -> None:
        epoch = self._last_epoch if epoch is None else int(epoch)
        self._last_epoch = epoch
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"NPYWriter stores numeric values only; {name!r} is {array.dtype}")
        self._pending[(name, epoch)] = array

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        self._add(name, np.float64(value), epoch)

    def add_array(self, name: str, value: np.ndarray, epoch: int | None = None) -> None:
        self._add(name, value, epoch)

    def save(self) -> None:
        if not self._pending:
            return
        # Taken out first: on a disk that keeps failing, covariance matrices
        # must not pile up in memory epoch after epoch. The error is raised.
        pending, self._pending = self._pending, {}
        try:
            for (name, epoch), array in pending.items():
                folder = self._folder(name)
                path = self.directory / folder / layout.epoch_filename(epoch)
                with writing(self, path), atomic_path(path) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
                epochs = self._counters[folder]["epochs"]
                if epoch not in epochs:
                    epochs.append(epoch)
                    epochs.sort()
        except WriterError:
            # Record what did get written; the first error is the one to report.
            with contextlib.suppress(WriterError):
                self._write_counters()
            raise
        self._write_counters()

    def _write_counters(self) -> None:
        content = {"format": FORMAT_VERSION, "values": self._counters}
        path = self.directory / layout.COUNTERS_FILE
        with writing(self, path):
            atomic_write(path, lambda handle: json.dump(content, handle, indent=1, sort_keys=True))

    def close(self) -> None:
        self.save()
        if self.zip and self.directory.is_dir():
            with writing(self, self.zip_path), atomic_path(self.zip_path) as tmp:
                self._write_zip(tmp)

    def _write_zip(self, target: Path) -> None:
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            # Temporary files of interrupted writes start with "." and stay out.
            for file in sorted(self.directory.rglob("*")):
                if file.is_file() and not file.name.startswith("."):
                    archive.write(file, Path(self.directory.name) / file.relative_to(self.directory))

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        """Keep the files of epochs before ``initial_epoch``; delete later ones."""
        counters = self.directory / layout.COUNTERS_FILE
        if not counters.is_file():
            return
        try:
            content = json.loads(counters.read_text(encoding="utf-8"))
            values = {
                safe_filename(str(k)): {"name": str(v["name"]), "epochs": [int(e) for e in v["epochs"]]}
                for k, v in content["values"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise WriterError(f"NPYWriter cannot resume from {counters}: {error}") from error
        for folder, entry in values.items():
            folder_path = self.directory / folder
            for epoch in [e for e in entry["epochs"] if e >= initial_epoch]:
                (folder_path / layout.epoch_filename(epoch)).unlink(missing_ok=True)
            entry["epochs"] = [e for e in entry["epochs"] if e < initial_epoch]
            if not entry["epochs"] and folder_path.is_dir() and not any(folder_path.iterdir()):
                folder_path.rmdir()
        self._counters = {folder: entry for folder, entry in values.items() if entry["epochs"]}
        self._folders = {entry["name"]: folder for folder, entry in self._counters.items()}
        self._last_epoch = initial_epoch
        self._write_counters()
