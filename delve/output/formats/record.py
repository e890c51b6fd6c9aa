"""The run record, ``<savefile>.run.json``: which names are the tracker's per-layer values, and what each layer is.

Content::

    {"format": 3, "layers": ["conv1", "fc"], "statistics": ["saturation"],
     "mode_statistics": ["average-saturation"], "widths": {"conv1": 8, "fc": 10},
     "descriptions": {"conv1": "Conv2d 1->8", "fc": "Linear 32->10"},
     "facts": {"conv1": {"bound": 8, "rf_min": [3, 3], "rf_max": [3, 3], "input_size": [8, 8],
                         "beyond_input": false, "note": ""},
               "fc": {"bound": 10}}}

``facts`` (format 3) are what ``delve report`` needs beyond the values: each
layer's rank bound and a convolution's receptive field against the input
(:mod:`delve.verdicts.facts`); a tracker writes them once its model's first
forward pass gave the input's shape. Format 2 has no ``facts`` (its report
judges saturation and probes alone), format 1 (delve 0.2.0) no ``widths`` or
``descriptions`` either; both are read. A run without the file (delve 0.1.x,
or files written by hand) is read by the value-name grammar alone.
"""

from __future__ import annotations

import json
import os

from ...common.files import atomic_write
from ...common.naming import RunRecord
from ..layout import record_path

__all__ = ["FORMAT_VERSION", "write_record", "read_record"]

FORMAT_VERSION = 3


def write_record(savefile: str | os.PathLike, record: RunRecord) -> None:
    """Write the record beside the run's CSV, atomically.

    Examples
    --------
    >>> import tempfile
    >>> savefile = os.path.join(tempfile.mkdtemp(), "run")
    >>> write_record(savefile, RunRecord(("fc",), ("saturation",)))
    >>> read_record(savefile).layers
    ('fc',)
    """
    content = {"format": FORMAT_VERSION, **record.to_dict()}
    atomic_write(record_path(savefile), lambda handle: json.dump(content, handle, indent=1))


def read_record(savefile: str | os.PathLike) -> RunRecord | None:
    """The record of a run, ``None`` when it has none.

    Raises
    ------
    ValueError
        When the file exists but is not a run record.
    """
    path = record_path(savefile)
    if not path.is_file():
        return None
    try:
        return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as error:
        raise ValueError(f"{path} is not a delve run record: {error}") from error
