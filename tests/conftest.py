"""Shared fixtures and the independent numpy references every test compares against.

The references are written from the definitions in docs/saturation.rst with numpy only
(two-pass covariance, ``np.linalg.eigvalsh``), never with delve's own code.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# The default profile draws the same examples on every run (derandomize) and
# reads no example database, so a run's verdict depends on the code only, not
# on a random seed or on what earlier runs on this machine happened to find.
settings.register_profile(
    "delve",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# ``pytest --hypothesis-profile=thorough`` for a deeper, random search than the default.
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("delve")


def np_cov(rows) -> np.ndarray:
    """Population covariance of the rows, two-pass, float64."""
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(rows.shape[0], -1)
    if rows.shape[0] == 1:
        # numpy before 2.0 reads a single row as one variable, whatever rowvar says.
        return np.zeros((rows.shape[1], rows.shape[1]))
    return np.atleast_2d(np.cov(rows, rowvar=False, bias=True))


def np_eigenvalues(cov) -> np.ndarray:
    """Descending eigenvalues with negatives clipped to 0."""
    return np.clip(np.linalg.eigvalsh(np.asarray(cov, dtype=np.float64))[::-1], 0.0, None)


def np_idim(cov, threshold: float) -> int:
    """Smallest k whose top-k eigenvalues reach ``threshold`` of the total; 0 for no variance."""
    values = np_eigenvalues(cov)
    cumulative = np.cumsum(values)
    total = cumulative[-1]
    if total <= 0:
        return 0
    return int(np.flatnonzero(cumulative / total >= threshold)[0]) + 1


def np_saturation(cov, threshold: float) -> float:
    return np_idim(cov, threshold) / np.asarray(cov).shape[0]


def np_logdet(cov) -> float:
    """Natural log-determinant, -inf for a singular matrix."""
    sign, logdet = np.linalg.slogdet(np.asarray(cov, dtype=np.float64))
    return float(logdet) if sign > 0 else -np.inf


def rel_fro(actual, expected) -> float:
    """Relative Frobenius error of ``actual`` against ``expected``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def reference_stats(rows, threshold: float = 0.99) -> dict[str, object]:
    """Every scalar statistic of docs/saturation.rst computed with numpy on the rows.

    Fewer rows than features span fewer directions than the layer has: the
    statistics of the spectrum's shape are then missing (NaN), and the rows
    are logged beside them.
    """
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(rows.shape[0], -1)
    cov = np_cov(rows)
    values = np_eigenvalues(cov)
    too_few = rows.shape[0] < rows.shape[1]
    out = {
        "cov": cov,
        "saturation": math.nan if too_few else np_saturation(cov, threshold),
        "intrinsic-dimensionality": math.nan if too_few else np_idim(cov, threshold),
        "covariance-trace": float(np.trace(cov)),
        "diagonal-trace": float(values.sum()),
        "covariance-log-determinant": math.nan if too_few else np_logdet(cov),
    }
    if too_few:
        out["rows"] = rows.shape[0]
    return out


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    """The numpy reference functions, as a namespace."""
    return SimpleNamespace(
        cov=np_cov,
        eigenvalues=np_eigenvalues,
        idim=np_idim,
        saturation=np_saturation,
        logdet=np_logdet,
        rel_fro=rel_fro,
        stats=reference_stats,
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    np.random.seed(0)
