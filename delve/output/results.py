"""Read a run back: tidy tables from its files, statistics recomputed from saved covariances.

A *tidy* table has one row per value, with the columns ``epoch``, ``mode``
(``train``/``eval``), ``layer``, ``stat`` (the logged statistic name, e.g.
``saturation``) and ``value`` (see :mod:`delve.output.tables`). Which names are the
tracker's per-layer values is decided by the run record written beside the
files (``<savefile>.run.json``, or inside the NPY folder's ``counters.json``);
everything else, ``eval-acc_top1`` included, is a user scalar with neither
mode nor layer. Files of delve 0.1.x carry no record and are read by the name
grammar alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..common.naming import RunRecord, classify, compose_name
from ..common.validation import check_fraction
from ..statistics.registry import STATISTICS, LayerSummary, resolve_stats
from ..statistics.spectra import spectra
from .formats.csv import read_csv, write_csv
from .formats.npy import index_values, load_array
from .formats.record import read_record
from .layout import csv_path
from .summary import format_summary, summary_table
from .tables import TIDY_COLUMNS, tidy, tidy_frame, wide

__all__ = [
    "TIDY_COLUMNS",
    "classify",
    "compose_name",
    "tidy",
    "wide",
    "read_csv",
    "load_results",
    "summary_table",
    "format_summary",
    "read_npy_dir",
    "load_npy_values",
    "recompute",
    "reconstruct_csv_from_npy_data",
]

COVARIANCE_KEY = "cov"
DEFAULT_RECOMPUTED = ("lsat", "idim")


def load_results(savefile: str | os.PathLike) -> pd.DataFrame:
    """A run's results as a tidy DataFrame with columns epoch, mode, layer, stat, value.

    Parameters
    ----------
    savefile : str or path
        The tracker's ``savefile`` (``"runs/vgg"``) or the CSV itself.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> _ = Path(path + ".csv").write_text(
    ...     "epoch;train-saturation_fc;eval-saturation_fc;test_accuracy\\n0;0.5;0.25;0.9\\n")
    >>> load_results(path)
       epoch   mode layer           stat  value
    0      0  train    fc     saturation   0.50
    1      0   eval    fc     saturation   0.25
    2      0   None  None  test_accuracy   0.90
    """
    return tidy(read_csv(savefile), read_record(savefile))


def read_npy_dir(npy_dir: str | os.PathLike) -> dict[str, dict[int, os.PathLike]]:
    """Index an NPY writer's folder: ``{value name: {epoch: file}}``.

    ``npy_dir`` may also be the run folder holding it (``<savefile>``).
    Names come from ``counters.json`` when present (folder names are
    sanitised and may differ from the value name), else from the folders.
    """
    return index_values(npy_dir)[0]  # type: ignore[return-value]


def load_npy_values(npy_dir: str | os.PathLike) -> pd.DataFrame:
    """The scalar values saved by the NPY writer, as a wide table (index epoch).

    Array values (``cov``, ``embed``) are left out.
    """
    rows: dict[int, dict[str, float]] = {}
    columns: list[str] = []
    for name, files in read_npy_dir(npy_dir).items():
        for epoch, path in files.items():
            array = load_array(path)  # type: ignore[arg-type]
            if array.ndim != 0:
                break
            rows.setdefault(epoch, {})[name] = float(array)
            if name not in columns:
                columns.append(name)
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns, dtype="float64").sort_index()
    frame.index = frame.index.astype("int64")
    frame.index.name = "epoch"
    return frame


def recompute(
    npy_dir: str | os.PathLike, threshold: float = 0.99, stats: Sequence[str] = DEFAULT_RECOMPUTED
) -> pd.DataFrame:
    """Statistics recomputed from saved covariances, at any threshold.

    Needs a run recorded with ``stats=[..., "cov"]`` and ``save_to=[..., "npy"]``;
    the model is not run again. Any statistic whose record says a covariance
    is all it needs (:attr:`~delve.statistics.registry.Statistic.from_covariance`:
    ``lsat``, ``idim``, ``det``, ``trc``, ``dtrc``, ``erank``, ``pr``,
    ``alpha`` and such user statistics) can be computed, also one that was not
    logged during training. The summaries they see hold the covariance, its
    spectrum and the threshold; the mean and row count are not saved (NaN, 0).

    Parameters
    ----------
    npy_dir : str or path
        The NPY writer's folder (``<savefile>/npy``) or the run folder.
    threshold : float
        Fraction of variance in ``(0, 1]``.
    stats : list of str
        Statistic keys to compute (default: saturation and intrinsic
        dimensionality).

    Returns
    -------
    pandas.DataFrame
        Tidy table (epoch, mode, layer, stat, value).

    Examples
    --------
    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "train-covariance-matrix_fc")
    >>> os.makedirs(folder)
    >>> np.save(os.path.join(folder, "epoch_00000.npy"), np.diag([4.0, 1.0, 0.0]))
    >>> recompute(os.path.dirname(folder), threshold=0.75)
       epoch   mode layer                      stat     value
    0      0  train    fc                saturation  0.333333
    1      0  train    fc  intrinsic-dimensionality  1.000000
    """
    threshold = check_fraction("threshold", threshold)
    keys = resolve_stats(stats)
    unsupported = [key for key in keys if not STATISTICS[key].from_covariance]
    if unsupported:
        accepted = ", ".join(key for key, statistic in STATISTICS.items() if statistic.from_covariance)
        raise ValueError(
            f"{', '.join(unsupported)} cannot be computed from a saved covariance; accepted keys: {accepted}"
        )
    index, record = index_values(npy_dir)
    entries = []
    covariance_name = STATISTICS[COVARIANCE_KEY].name
    for name, files in index.items():
        mode, layer, stat = classify(name, record)
        if stat != covariance_name or layer is None:
            continue
        for epoch, path in files.items():
            matrix = load_array(path)  # type: ignore[arg-type]
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not np.issubdtype(matrix.dtype, np.number):
                raise ValueError(f"{path} does not hold a square covariance matrix (shape {matrix.shape})")
            entries.append((epoch, mode, layer, torch.from_numpy(np.asarray(matrix, dtype=np.float64))))
    if not entries:
        raise ValueError(
            f"no covariance matrices in {npy_dir}; record the run with stats=[..., 'cov'] and save_to=[..., 'npy']"
        )
    entries.sort(key=lambda entry: entry[0])
    rows = []
    for (epoch, mode, layer, covariance), spectrum in zip(entries, spectra(entry[3] for entry in entries)):
        d = covariance.shape[0]
        summary = LayerSummary(
            covariance, spectrum, torch.full((d,), float("nan"), dtype=torch.float64), threshold, 0, {}
        )
        for key in keys:
            rows.append((epoch, mode, layer, STATISTICS[key].name, float(STATISTICS[key].compute(summary))))
    return tidy_frame(rows)


def reconstruct_csv_from_npy_data(
    npy_dir: str | os.PathLike,
    savefile: str | os.PathLike | None = None,
    threshold: float | None = None,
    stats: Iterable[str] | None = None,
    *,
    thresh: float | None = None,
) -> pd.DataFrame:
    """Rebuild a run's wide table (and optionally its CSV) from the NPY writer's folder.

    Every scalar saved as NPY becomes a column. Statistics are computed from
    the saved covariance matrices (see :func:`recompute`) for the keys in
    ``stats`` that were not saved, and for all of them when ``threshold`` is
    given; they replace the stored columns. Without ``stats``, a
    ``threshold`` recomputes saturation and intrinsic dimensionality, as in
    delve 0.1.x.

    Parameters
    ----------
    npy_dir : str or path
        The NPY writer's folder (``<savefile>/npy``), or the run folder
        ``<savefile>`` that holds it.
    savefile : str or path, optional
        Write the table to ``<savefile>.csv`` in the tracker's CSV format.
    threshold : float, optional
        Recompute at this threshold (saturation statistics depend on it).
    stats : list of str, optional
        Statistic keys to (re)compute from the covariances, e.g.
        ``["lsat", "erank", "det"]``.
    thresh : float, optional
        The delve 0.1.x name of ``threshold``.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "test_accuracy")
    >>> os.makedirs(folder)
    >>> np.save(os.path.join(folder, "epoch_00000.npy"), np.float64(0.5))
    >>> reconstruct_csv_from_npy_data(os.path.dirname(folder))
           test_accuracy
    epoch
    0                0.5
    """
    if thresh is not None:
        if threshold is not None and threshold != thresh:
            raise ValueError(f"give threshold or its 0.1.x name thresh, not both ({threshold!r} != {thresh!r})")
        threshold = thresh
    stored = load_npy_values(npy_dir)
    keys = resolve_stats(stats) if stats is not None else (list(DEFAULT_RECOMPUTED) if threshold is not None else [])
    if threshold is None:
        stored_names = {classify(str(name), _record(npy_dir))[2] for name in stored.columns}
        keys = [key for key in keys if STATISTICS[key].name not in stored_names]
    frame = stored
    if keys:
        recomputed = wide(recompute(npy_dir, 0.99 if threshold is None else threshold, keys))
        frame = recomputed.combine_first(stored) if not stored.empty else recomputed
        frame = frame.reindex(columns=list(dict.fromkeys([*stored.columns, *recomputed.columns])))
    if savefile is not None:
        write_csv(frame, csv_path(savefile))
    return frame


def _record(npy_dir: str | os.PathLike) -> RunRecord | None:
    return index_values(npy_dir)[1]
