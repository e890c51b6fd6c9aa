"""delve 0.1.x import path of the result tools; the logic lives in :mod:`delve.output.results`."""

from .output.results import load_results, recompute, reconstruct_csv_from_npy_data

__all__ = ["reconstruct_csv_from_npy_data", "load_results", "recompute"]
