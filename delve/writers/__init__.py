"""Writers: where a tracker's values go (``save_to=``)."""

from .base import AbstractWriter, CompositeWriter, CompositWriter, WriterError
from .csv import CSVWriter
from .registry import WRITERS, build_writer, check_save_to, register_writer

__all__ = [
    "AbstractWriter",
    "CompositeWriter",
    "CompositWriter",
    "WriterError",
    "CSVWriter",
    "WRITERS",
    "build_writer",
    "check_save_to",
    "register_writer",
]
