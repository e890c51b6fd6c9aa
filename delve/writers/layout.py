"""Where the files of a run live, relative to the tracker's ``savefile``.

For ``savefile="runs/vgg"``::

    runs/vgg.csv                         CSV (one row per epoch)
    runs/vgg/events.out.tfevents.*       TensorBoard: the run folder is the log dir
    runs/vgg/plots/<stat>_<mode>_epoch_00003.png   per-layer profile of one epoch
    runs/vgg/plots/saturation_<mode>_heatmap.png   layers x epochs, redrawn each epoch
                                         (names: delve.plotting.profile_filename, heatmap_filename)
    runs/vgg/npy/<value name>/epoch_00003.npy      one folder per logged value
    runs/vgg/npy/counters.json                     folder -> value name, epochs written
    runs/vgg/npy.zip                     optional archive of exactly runs/vgg/npy

So ``tensorboard --logdir runs`` shows one run per tracker, named after it.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "csv_path",
    "run_dir",
    "npy_dir",
    "plot_dir",
    "tensorboard_dir",
    "COUNTERS_FILE",
    "epoch_filename",
    "epoch_of_filename",
]

COUNTERS_FILE = "counters.json"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.npy$")


def csv_path(savepath: str | Path) -> Path:
    """``<savepath>.csv``; a path that already ends in ``.csv`` is kept.

    Examples
    --------
    >>> csv_path("runs/vgg").as_posix(), csv_path("runs/vgg.csv").as_posix()
    ('runs/vgg.csv', 'runs/vgg.csv')
    """
    text = str(savepath)
    return Path(text if text.endswith(".csv") else text + ".csv")


def run_dir(savepath: str | Path) -> Path:
    """The folder holding a run's non-CSV files: ``savepath`` itself.

    Examples
    --------
    >>> run_dir("runs/vgg.csv").as_posix()
    'runs/vgg'
    """
    text = str(savepath)
    return Path(text[: -len(".csv")] if text.endswith(".csv") else text)


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
