"""NPY output: one folder per logged value, one ``.npy`` file per epoch (see :mod:`delve.output.formats.npy`)."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..common.files import atomic_path
from ..common.naming import safe_filename
from ..output.formats.npy import Counters, read_counters, save_array, value_file, write_counters
from ..output.layout import COUNTERS_FILE, npy_dir
from .base import AbstractWriter, WriterError, writing

__all__ = ["NPYWriter"]


class NPYWriter(AbstractWriter):
    """Save every value, scalars and arrays, as NumPy files.

    Layout (``savepath="runs/vgg"``)::

        runs/vgg/npy/train-saturation_fc/epoch_00000.npy     0-d float64
        runs/vgg/npy/train-covariance-matrix_fc/epoch_00000.npy   (d, d) float64
        runs/vgg/npy/counters.json

    Folder names are the value names passed through
    :func:`delve.common.naming.safe_filename`; ``counters.json`` maps each folder to
    its value name, records the epochs written and the run record, so a run
    can be read back (:func:`delve.output.results.read_npy_dir`) and resumed. Nothing is pickled:
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
        self.directory = Path(directory) if directory is not None else npy_dir(self.savepath)
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
                path = value_file(self.directory, folder, epoch)
                with writing(self, path):
                    save_array(path, array)
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
        with writing(self, self.directory / COUNTERS_FILE):
            write_counters(self.directory, Counters(self._counters, self.run_record))

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
        try:
            counters = read_counters(self.directory)
        except ValueError as error:
            raise WriterError(f"NPYWriter cannot resume: {error}") from error
        if counters is None:
            return
        for folder, entry in counters.values.items():
            for epoch in [e for e in entry["epochs"] if e >= initial_epoch]:
                value_file(self.directory, folder, epoch).unlink(missing_ok=True)
            entry["epochs"] = [e for e in entry["epochs"] if e < initial_epoch]
            folder_path = self.directory / folder
            if not entry["epochs"] and folder_path.is_dir() and not any(folder_path.iterdir()):
                folder_path.rmdir()
        self._counters = {folder: entry for folder, entry in counters.values.items() if entry["epochs"]}
        self._folders = {entry["name"]: folder for folder, entry in self._counters.items()}
        self._last_epoch = initial_epoch
        self._write_counters()
