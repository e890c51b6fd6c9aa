"""Where the files of a run live, relative to the tracker's ``savefile``: every file name, here only.

For ``savefile="runs/vgg"``::

    runs/vgg.csv                          CSV (one row per epoch)
    runs/vgg.run.json                     the run record: its layers and statistic names
    runs/vgg/events.out.tfevents.*        TensorBoard: the run folder is the log dir
    runs/vgg/plots/saturation_train_profile.png       per-layer profile, the latest epoch (redrawn)
    runs/vgg/plots/saturation_train_epoch_00003.png   per-layer profile of one epoch (an option)
    runs/vgg/plots/saturation_train_heatmap.png       layers x epochs, redrawn each epoch
    runs/vgg/plots/average-saturation_history.png     the layer average over epochs
    runs/vgg/plots/verdicts.png                       the report as a figure: saturation, probes, border, tail
    runs/vgg/npy/<value name>/epoch_00003.npy         one folder per logged value
    runs/vgg/npy/counters.json                        folder -> value name, epochs written
    runs/vgg/npy.zip                      optional archive of exactly runs/vgg/npy

So ``tensorboard --logdir runs`` shows one run per tracker, named after it,
and a folder holding several runs' CSVs (``runs/``) lists them
(:func:`find_runs`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..common.naming import safe_filename

__all__ = [
    "csv_path",
    "record_path",
    "run_dir",
    "npy_dir",
    "plot_dir",
    "tensorboard_dir",
    "COUNTERS_FILE",
    "epoch_filename",
    "epoch_of_filename",
    "profile_filename",
    "heatmap_filename",
    "history_filename",
    "verdict_filename",
    "PROFILE_PATTERN",
    "run_name",
    "find_runs",
]

COUNTERS_FILE = "counters.json"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.npy$")
#: Matches the per-epoch profile PNGs; group 1 is the epoch.
PROFILE_PATTERN = re.compile(r"^.+_(?:train|eval)_epoch_(\d+)\.png$")


def _stem(savepath: str | Path) -> str:
    text = str(savepath)
    return text[: -len(".csv")] if text.endswith(".csv") else text


def csv_path(savepath: str | Path) -> Path:
    """``<savepath>.csv``; a path that already ends in ``.csv`` is kept.

    Examples
    --------
    >>> csv_path("runs/vgg").as_posix(), csv_path("runs/vgg.csv").as_posix()
    ('runs/vgg.csv', 'runs/vgg.csv')
    """
    return Path(_stem(savepath) + ".csv")


def record_path(savepath: str | Path) -> Path:
    """The run record beside the CSV: ``<savepath>.run.json``.

    Examples
    --------
    >>> record_path("runs/vgg.csv").as_posix()
    'runs/vgg.run.json'
    """
    return Path(_stem(savepath) + ".run.json")


def run_dir(savepath: str | Path) -> Path:
    """The folder holding a run's non-CSV files: ``savepath`` itself.

    Examples
    --------
    >>> run_dir("runs/vgg.csv").as_posix()
    'runs/vgg'
    """
    return Path(_stem(savepath))


def npy_dir(savepath: str | Path) -> Path:
    """Folder of the NPY writer.

    Examples
    --------
    >>> npy_dir("runs/vgg").as_posix()
    'runs/vgg/npy'
    """
    return run_dir(savepath) / "npy"


def plot_dir(savepath: str | Path) -> Path:
    """Folder of the plot writer's PNGs.

    Examples
    --------
    >>> plot_dir("runs/vgg").as_posix()
    'runs/vgg/plots'
    """
    return run_dir(savepath) / "plots"


def tensorboard_dir(savepath: str | Path) -> Path:
    """TensorBoard log dir of a run: the run folder, so the run is named after it.

    Examples
    --------
    >>> tensorboard_dir("runs/vgg").as_posix()
    'runs/vgg'
    """
    return run_dir(savepath)


def epoch_filename(epoch: int) -> str:
    """File name of one epoch's value in an NPY value folder.

    Examples
    --------
    >>> epoch_filename(3)
    'epoch_00003.npy'
    """
    return f"epoch_{int(epoch):05d}.npy"


def epoch_of_filename(name: str) -> int | None:
    """The epoch encoded in :func:`epoch_filename`, ``None`` for other names.

    Examples
    --------
    >>> epoch_of_filename("epoch_00012.npy"), epoch_of_filename("notes.txt")
    (12, None)
    """
    match = _EPOCH_FILE.match(name)
    return int(match.group(1)) if match else None


def profile_filename(stat: str, mode: str, epoch: int | None = None) -> str:
    """PNG name of a per-layer profile: of one epoch, or (``epoch=None``) the latest one, redrawn.

    Examples
    --------
    >>> profile_filename("saturation", "train", 3), profile_filename("saturation", "train")
    ('saturation_train_epoch_00003.png', 'saturation_train_profile.png')
    """
    if epoch is None:
        return f"{safe_filename(stat)}_{safe_filename(mode)}_profile.png"
    return f"{safe_filename(stat)}_{safe_filename(mode)}_epoch_{int(epoch):05d}.png"


def heatmap_filename(stat: str, mode: str) -> str:
    """PNG name of a layers-by-epochs heatmap.

    Examples
    --------
    >>> heatmap_filename("saturation", "eval")
    'saturation_eval_heatmap.png'
    """
    return f"{safe_filename(stat)}_{safe_filename(mode)}_heatmap.png"


def history_filename(stat: str) -> str:
    """PNG name of a per-mode value (a layer average) drawn over epochs, both modes in one figure.

    Examples
    --------
    >>> history_filename("average-saturation")
    'average-saturation_history.png'
    """
    return f"{safe_filename(stat)}_history.png"


def verdict_filename() -> str:
    """PNG name of the verdict figure (the report drawn: saturation, probes, border, tail, findings), redrawn.

    Examples
    --------
    >>> verdict_filename()
    'verdicts.png'
    """
    return "verdicts.png"


def run_name(savepath: str | Path) -> str:
    """The run's name in figure titles and TensorBoard: its run folder's name.

    Examples
    --------
    >>> run_name("runs/vgg.csv")
    'vgg'
    """
    return run_dir(savepath).name


def find_runs(folder: str | Path) -> list[Path]:
    """The savefiles of the runs whose CSVs lie directly in ``folder``, sorted by name.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("wide.csv", "lean.csv", "notes.txt"):
    ...     with open(os.path.join(folder, name), "w") as handle:
    ...         _ = handle.write("epoch;loss\\n0;1.0\\n")
    >>> [path.name for path in find_runs(folder)]
    ['lean', 'wide']
    """
    return [path.with_suffix("") for path in sorted(Path(folder).glob("*.csv")) if path.is_file()]
