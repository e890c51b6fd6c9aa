"""Read a run back: tidy tables from the CSV, statistics recomputed from saved covariances.

A *tidy* table has one row per value, with the columns ``epoch``, ``mode``
(``train``/``eval``), ``layer``, ``stat`` (the logged statistic name, e.g.
``saturation``) and ``value``. Values that belong to no layer keep ``layer``
empty (``None``): a layer average such as ``train-average-saturation`` has
``mode="train", stat="average-saturation"``, and a user scalar such as
``test_accuracy`` has neither mode nor layer and ``stat="test_accuracy"``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .io import atomic_write
from .metrics import intrinsic_dimensionality, saturation, spectra
from .naming import MODES, parse_value_name, value_name
from .writers import layout

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

TIDY_COLUMNS = ["epoch", "mode", "layer", "stat", "value"]
COVARIANCE_STAT = "covariance-matrix"


def classify(name: str) -> tuple[str | None, str | None, str]:
    """Split a logged value's name into ``(mode, layer, stat)``.

    Examples
    --------
    >>> classify("train-saturation_features-0")
    ('train', 'features-0', 'saturation')
    >>> classify("eval-average-saturation")
    ('eval', None, 'average-saturation')
    >>> classify("test_accuracy")
    (None, None, 'test_accuracy')
    """
    parsed = parse_value_name(name)
    if parsed is not None:
        return parsed.mode, parsed.layer, parsed.statistic
    mode, sep, rest = name.partition("-")
    if sep and mode in MODES and rest.startswith("average-"):
        return mode, None, rest
    return None, None, name


def compose_name(mode: str | None, layer: str | None, stat: str) -> str:
    """Inverse of :func:`classify`.

    Examples
    --------
    >>> compose_name("train", "fc", "saturation"), compose_name("eval", None, "average-saturation")
    ('train-saturation_fc', 'eval-average-saturation')
    """
    if layer is not None:
        return value_name(str(mode), stat, layer)
    if mode is not None:
        return f"{mode}-{stat}"
    return stat


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Turn a wide table (index epoch, one column per value) into a tidy one.

    Empty cells (a layer not yet seen, a scalar logged once) are dropped.
    Rows keep the column order of the wide table within each epoch, which for
    delve's own files is the layers' forward order.

    Examples
    --------
    >>> wide_frame = pd.DataFrame({"train-saturation_fc": [0.5, 0.25], "loss": [1.0, None]},
    ...                           index=pd.Index([0, 1], name="epoch"))
    >>> tidy(wide_frame)
       epoch   mode layer        stat  value
    0      0  train    fc  saturation   0.50
    1      0   None  None        loss   1.00
    2      1  train    fc  saturation   0.25
    """
    rows = []
    parts = {str(column): classify(str(column)) for column in frame.columns}
    for epoch, row in zip(frame.index, frame.itertuples(index=False, name=None)):
        for column, value in zip(frame.columns, row):
            if _is_missing(value):
                continue
            mode, layer, stat = parts[str(column)]
            rows.append((int(epoch), mode, layer, stat, float(value)))
    return _tidy_frame(rows)


def _tidy_frame(rows: list[tuple]) -> pd.DataFrame:
    # Object columns keep None for "no mode / no layer" on every pandas
    # version (pandas 3 would otherwise infer strings and turn None into NaN).
    columns = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return pd.DataFrame(
        {
            "epoch": pd.Series(columns[0], dtype="int64"),
            "mode": pd.Series(columns[1], dtype=object),
            "layer": pd.Series(columns[2], dtype=object),
            "stat": pd.Series(columns[3], dtype=object),
            "value": pd.Series(columns[4], dtype="float64"),
        }
    )


def wide(results: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`tidy`: index ``epoch``, one column per value name.

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [0, 1], "mode": ["train", "train"], "layer": ["fc", "fc"],
    ...                       "stat": ["saturation", "saturation"], "value": [0.5, 0.25]})
    >>> wide(frame)
           train-saturation_fc
    epoch
    0                     0.50
    1                     0.25
    """
    names = [
        compose_name(None if _is_missing(m) else m, None if _is_missing(lay) else lay, s)
        for m, lay, s in zip(results["mode"], results["layer"], results["stat"])
    ]
    long = pd.DataFrame({"epoch": results["epoch"].astype("int64"), "name": names, "value": results["value"]})
    order = list(dict.fromkeys(names))
    frame = long.pivot_table(index="epoch", columns="name", values="value", aggfunc="last", sort=False)
    frame = frame.reindex(columns=order).sort_index()
    frame.columns.name = None
    frame.index.name = "epoch"
    return frame


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
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> _ = open(path + ".csv", "w").write("epoch;train-saturation_fc\\n0;0.5\\n")
    >>> read_csv(path)
           train-saturation_fc
    epoch
    0                      0.5
    """
    path = layout.csv_path(savefile)
    if not path.is_file():
        raise FileNotFoundError(f"no delve results at {path} (file not found)")
    try:
        frame = pd.read_csv(path, sep=";", index_col=0)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        raise ValueError(f"{path} is not a readable delve CSV: {_first_line(error)}") from error
    if len(frame) == 0:
        raise ValueError(f"{path} is not a delve CSV: it holds no epoch rows")
    try:
        epochs = pd.to_numeric(frame.index)
        frame = frame.apply(pd.to_numeric)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a delve CSV: {_first_line(error)}") from error
    if len(epochs) and (np.isnan(epochs).any() or (epochs != np.round(epochs)).any()):
        raise ValueError(f"{path} is not a delve CSV: the first column must hold integer epochs")
    frame.index = pd.Index(np.asarray(epochs, dtype="int64"), name="epoch")
    return frame.astype("float64")


def load_results(savefile: str | os.PathLike) -> pd.DataFrame:
    """A run's results as a tidy DataFrame with columns epoch, mode, layer, stat, value.

    Parameters
    ----------
    savefile : str or path
        The tracker's ``savefile`` (``"runs/vgg"``) or the CSV itself.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run")
    >>> _ = open(path + ".csv", "w").write(
    ...     "epoch;train-saturation_fc;eval-saturation_fc;test_accuracy\\n0;0.5;0.25;0.9\\n")
    >>> load_results(path)
       epoch   mode layer           stat  value
    0      0  train    fc     saturation   0.50
    1      0   eval    fc     saturation   0.25
    2      0   None  None  test_accuracy   0.90
    """
    return tidy(read_csv(savefile))


def summary_table(results: pd.DataFrame, epoch: int | None = None, stats: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-layer table of one epoch (the last by default): layers by ``"<mode> <stat>"``.

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [0, 0], "mode": ["train", "eval"], "layer": ["fc", "fc"],
    ...                       "stat": ["saturation", "saturation"], "value": [0.5, 0.25]})
    >>> summary_table(frame)
           train saturation  eval saturation
    layer
    fc                  0.5             0.25
    """
    if results.empty:
        return pd.DataFrame(index=pd.Index([], name="layer"))
    epoch = int(results["epoch"].max()) if epoch is None else int(epoch)
    selected = results[(results["epoch"] == epoch) & results["layer"].notna()]
    if stats is not None:
        selected = selected[selected["stat"].isin(list(stats))]
    columns = [f"{mode} {stat}" for mode, stat in zip(selected["mode"], selected["stat"])]
    long = pd.DataFrame(
        {"layer": selected["layer"].to_numpy(), "column": columns, "value": selected["value"].to_numpy()}
    )
    table = long.pivot_table(index="layer", columns="column", values="value", aggfunc="last", sort=False)
    table = table.reindex(index=list(dict.fromkeys(long["layer"])), columns=list(dict.fromkeys(columns)))
    table.columns.name = None
    table.index.name = "layer"
    return table


def _scalars(results: pd.DataFrame, epoch: int) -> dict[str, float]:
    selected = results[(results["epoch"] == epoch) & results["layer"].isna()]
    return {
        compose_name(None if _is_missing(mode) else mode, None, stat): value
        for mode, stat, value in zip(selected["mode"], selected["stat"], selected["value"])
    }


def _format_number(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def _short_stat(stat: str) -> str:
    from .statistics import STATISTICS

    for statistic in STATISTICS.values():
        if statistic.name == stat:
            return statistic.key
    return stat


def format_summary(results: pd.DataFrame, epoch: int | None = None, stats: Iterable[str] | None = None) -> str:
    """The per-layer table of one epoch as compact text, user scalars on the last line.

    Columns are ``<mode> <statistic key>`` (``lsat`` saturation, ``idim``
    intrinsic dimensionality, ... as in ``stats=``).

    Examples
    --------
    >>> frame = pd.DataFrame({"epoch": [2, 2, 2], "mode": ["train", "train", None],
    ...                       "layer": ["conv1", "fc", None], "stat": ["saturation", "saturation", "test_accuracy"],
    ...                       "value": [0.5, 0.125, 0.875]})
    >>> print(format_summary(frame))
    epoch 2
    layer  train lsat
    conv1         0.5
    fc          0.125
    test_accuracy = 0.875
    """
    if results.empty:
        return "no values logged"
    epoch = int(results["epoch"].max()) if epoch is None else int(epoch)
    lines = [f"epoch {epoch}"]
    table = summary_table(results, epoch, stats)
    if not table.empty:
        cells = [[str(layer) for layer in table.index]]
        headers = ["layer"]
        for column in table.columns:
            mode, _, stat = column.partition(" ")
            headers.append(f"{mode} {_short_stat(stat)}")
            cells.append([_format_number(value) for value in table[column]])
        widths = [max(len(header), *(len(cell) for cell in column)) for header, column in zip(headers, cells)]
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for row in range(len(table)):
            lines.append(
                "  ".join(
                    column[row].ljust(w) if i == 0 else column[row].rjust(w)
                    for i, (column, w) in enumerate(zip(cells, widths))
                )
            )
    scalars = _scalars(results, epoch)
    if scalars:
        lines.append("   ".join(f"{name} = {_format_number(value)}" for name, value in scalars.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------- NPY


def read_npy_dir(npy_dir: str | os.PathLike) -> dict[str, dict[int, Path]]:
    """Index an NPY writer's folder: ``{value name: {epoch: file}}``.

    ``npy_dir`` may also be the run folder holding it (``<savefile>``).
    Names come from ``counters.json`` when present (folder names are
    sanitised and may differ from the value name), else from the folders.
    """
    directory = Path(npy_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"no NPY results at {directory} (folder not found)")
    if not (directory / layout.COUNTERS_FILE).is_file() and (directory / "npy" / layout.COUNTERS_FILE).is_file():
        directory = directory / "npy"  # the run folder (the NPY writer's savepath) was given
    names: dict[str, str] = {}
    counters = directory / layout.COUNTERS_FILE
    if counters.is_file():
        try:
            content = json.loads(counters.read_text(encoding="utf-8"))
            names = {str(folder): str(entry["name"]) for folder, entry in content["values"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{counters} is not a delve counters file: {_first_line(error)}") from error
    index: dict[str, dict[int, Path]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        files = {}
        for file in folder.iterdir():
            epoch = layout.epoch_of_filename(file.name)
            if epoch is not None:
                files[epoch] = file
        if files:
            index[names.get(folder.name, folder.name)] = dict(sorted(files.items()))
    return index


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {_first_line(error)}") from error


def load_npy_values(npy_dir: str | os.PathLike) -> pd.DataFrame:
    """The scalar values saved by the NPY writer, as a wide table (index epoch).

    Array values (``cov``, ``embed``) are left out.
    """
    rows: dict[int, dict[str, float]] = {}
    columns: list[str] = []
    for name, files in read_npy_dir(npy_dir).items():
        for epoch, path in files.items():
            array = _load_npy(path)
            if array.ndim != 0:
                break
            rows.setdefault(epoch, {})[name] = float(array)
            if name not in columns:
                columns.append(name)
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns, dtype="float64").sort_index()
    frame.index = frame.index.astype("int64")
    frame.index.name = "epoch"
    return frame


def recompute(npy_dir: str | os.PathLike, threshold: float = 0.99) -> pd.DataFrame:
    """Saturation and intrinsic dimensionality at another threshold, from saved covariances.

    Needs a run recorded with ``stats=[..., "cov"]`` and ``save_to=[..., "npy"]``;
    the model is not run again.

    Parameters
    ----------
    npy_dir : str or path
        The NPY writer's folder (``<savefile>/npy``).
    threshold : float
        Fraction of variance in ``(0, 1]``.

    Returns
    -------
    pandas.DataFrame
        Tidy table (epoch, mode, layer, stat, value) with the stats
        ``saturation`` and ``intrinsic-dimensionality``.

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
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    entries = []
    for name, files in read_npy_dir(npy_dir).items():
        mode, layer, stat = classify(name)
        if stat != COVARIANCE_STAT or layer is None:
            continue
        for epoch, path in files.items():
            matrix = _load_npy(path)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not np.issubdtype(matrix.dtype, np.number):
                raise ValueError(f"{path} does not hold a square covariance matrix (shape {matrix.shape})")
            entries.append((epoch, mode, layer, torch.from_numpy(np.asarray(matrix, dtype=np.float64))))
    if not entries:
        raise ValueError(
            f"no covariance matrices in {npy_dir}; record the run with stats=[..., 'cov'] and save_to=[..., 'npy']"
        )
    entries.sort(key=lambda entry: entry[0])
    rows = []
    for (epoch, mode, layer, _), spectrum in zip(entries, spectra(entry[3] for entry in entries)):
        rows.append((epoch, mode, layer, "saturation", saturation(spectrum.values, threshold)))
        rows.append(
            (
                epoch,
                mode,
                layer,
                "intrinsic-dimensionality",
                float(intrinsic_dimensionality(spectrum.values, threshold)),
            )
        )
    return _tidy_frame(rows)


def reconstruct_csv_from_npy_data(
    npy_dir: str | os.PathLike,
    savefile: str | os.PathLike | None = None,
    threshold: float | None = None,
    *,
    thresh: float | None = None,
) -> pd.DataFrame:
    """Rebuild a run's wide table (and optionally its CSV) from the NPY writer's folder.

    Every scalar saved as NPY becomes a column. With ``threshold``, saturation
    and intrinsic dimensionality are recomputed from the saved covariance
    matrices at that threshold and replace the stored ones.

    Parameters
    ----------
    npy_dir : str or path
        The NPY writer's folder (``<savefile>/npy``), or the run folder
        ``<savefile>`` that holds it.
    savefile : str or path, optional
        Write the table to ``<savefile>.csv`` in the tracker's CSV format.
    threshold : float, optional
        Recompute saturation statistics at this threshold.
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
    frame = stored
    if threshold is not None:
        recomputed = wide(recompute(npy_dir, threshold))
        frame = recomputed.combine_first(stored) if not stored.empty else recomputed
        frame = frame.reindex(columns=list(dict.fromkeys([*stored.columns, *recomputed.columns])))
    if savefile is not None:
        atomic_write(layout.csv_path(savefile), lambda handle: frame.to_csv(handle, sep=";"))
    return frame


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
