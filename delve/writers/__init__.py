"""Writers: where a tracker's values go (``save_to=``).

=============================================  ==============================
``save_to`` key                                writer
=============================================  ==============================
``"csv"``                                      :class:`CSVWriter`
``"npy"``                                      :class:`NPYWriter`
``"print"``, ``"console"``                     :class:`PrintWriter`
``"tensorboard"``, ``"tb"``                    :class:`TensorBoardWriter`
``"plot"``, ``"csvplot"``, ``"plotcsv"``,      :class:`CSVandPlottingWriter`
``"csvplotting"``
=============================================  ==============================

``save_to`` may also hold writer instances, mixed with keys. Where each
writer puts its files is described in :mod:`delve.writers.layout`.
"""

from .base import AbstractWriter, CompositeWriter, CompositWriter, WriterError
from .console import PrintWriter
from .csv import CSVWriter
from .npy import NPYWriter
from .plot import CSVandPlottingWriter, PlotWriter
from .registry import WRITERS, build_writer, check_save_to, register_writer
from .tensorboard import TensorBoardWriter

__all__ = [
    "AbstractWriter",
    "CompositeWriter",
    "CompositWriter",
    "WriterError",
    "CSVWriter",
    "NPYWriter",
    "PrintWriter",
    "TensorBoardWriter",
    "CSVandPlottingWriter",
    "PlotWriter",
    "WRITERS",
    "build_writer",
    "check_save_to",
    "register_writer",
]
