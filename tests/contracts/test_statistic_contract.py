"""The contract every registered statistic keeps, checked for each one.

For every built-in statistic: the value equals an independent numpy reference
on the concatenated rows; a tracker restored from a checkpoint (saved with
``torch.save``, loaded with ``weights_only=True``) mid-epoch gives the same
value; and two gloo processes that each saw half the batches give the value
of one process that saw them all. Adding a built-in statistic means adding its
numpy reference here: the first test fails until it exists.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import np_cov, np_eigenvalues, np_idim, np_logdet, np_saturation
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from torch import nn

from delve import SaturationTracker
from delve.statistics.builtin import BUILTIN_KEYS
from delve.statistics.registry import STATISTICS

THRESHOLD = 0.95
D = 8
TIMEOUT_S = 150


def _entropy_rank(values: np.ndarray) -> float:
    if values.sum() <= 0:
        return 0.0
    p = values / values.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _participation(values: np.ndarray) -> float:
    squares = (values**2).sum()
    return float(values.sum() ** 2 / squares) if squares > 0 else 0.0


def _decay(values: np.ndarray) -> float:
    floor = len(values) * np.finfo(np.float64).eps * values[0]
    positive = values[values > floor]
    if len(positive) < 2:
        return 0.0
    slope = np.polyfit(np.log(np.arange(1, len(positive) + 1)), np.log(positive), 1)[0]
    return float(-slope)


def _dormant(rows: np.ndarray) -> float:
    activity = np.abs(rows).mean(axis=0)
    return float(np.mean(activity <= 0.025 * activity.mean()))


def _embed_spread(rows: np.ndarray) -> np.ndarray:
    """What the embedding of a sample holding every row must show: the top two eigenvalues as variances."""
    return np_eigenvalues(np_cov(rows))[:2]


def labels_of(rows: torch.Tensor | np.ndarray) -> np.ndarray:
    """The class each row belongs to (the probe's targets): the largest of its first three features."""
    return np.asarray(rows)[:, :3].argmax(axis=1)


def _probe(rows: np.ndarray) -> dict[str, float]:
    """scikit-learn's Ridge (alpha = lambda N) on the rows and their classes, scored in-sample."""
    targets = np.eye(3)[labels_of(rows)]
    penalty = 1e-3 * np.trace(np.cov(rows, rowvar=False, bias=True)) / rows.shape[1]
    model = Ridge(alpha=penalty * len(rows), solver="cholesky").fit(rows, targets)
    predicted = model.predict(rows)
    return {
        "probe-r2": r2_score(targets, predicted, multioutput="variance_weighted"),
        "probe-accuracy": float(np.mean(predicted.argmax(1) == labels_of(rows))),
    }


#: key -> numpy reference on the concatenated rows (threshold THRESHOLD).
REFERENCES: dict[str, Callable[[np.ndarray], object]] = {
    "lsat": lambda rows: np_saturation(np_cov(rows), THRESHOLD),
    "idim": lambda rows: np_idim(np_cov(rows), THRESHOLD),
    "cov": np_cov,
    "det": lambda rows: np_logdet(np_cov(rows)),
    "trc": lambda rows: float(np.trace(np_cov(rows))),
    "dtrc": lambda rows: float(np_eigenvalues(np_cov(rows)).sum()),
    "embed": _embed_spread,
    "erank": lambda rows: _entropy_rank(np_eigenvalues(np_cov(rows))),
    "pr": lambda rows: _participation(np_eigenvalues(np_cov(rows))),
    "alpha": lambda rows: _decay(np_eigenvalues(np_cov(rows))),
    "dorm": _dormant,
    "probe": _probe,
}
BUILT_IN = sorted(BUILTIN_KEYS)


def identity() -> nn.Module:
    layer = nn.Linear(D, D).double()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(D, dtype=torch.float64))
        layer.bias.zero_()
    return layer


def batches() -> list[torch.Tensor]:
    """Eight batches of uneven size: a decaying spectrum, an offset, two nearly silent units."""
    generator = torch.Generator().manual_seed(17)
    scales = torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0, 0.5, 1e-3, 1e-3], dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))[0]
    out = []
    for n in (40, 7, 61, 23, 55, 9, 38, 30):
        rows = torch.randn(n, D, generator=generator, dtype=torch.float64) * scales
        rows[:, :6] = rows[:, :6] @ mixing + 4.0
        out.append(rows)
    return out


def run(stats: list[str], steps: list[torch.Tensor], state: dict | None = None) -> tuple[dict, dict]:
    layer = identity()
    tracker = SaturationTracker("contract", modules=layer, stats=stats, nosave=True, sat_threshold=THRESHOLD)
    if state is not None:
        tracker.load_state_dict(state)
    with torch.no_grad():
        for batch in steps:
            if "probe" in stats:
                tracker.set_targets(torch.from_numpy(labels_of(batch)))
            layer(batch)
    saved = tracker.state_dict()
    values = tracker.add_saturations()
    tracker.close()
    return values, saved


def logged(values: dict, key: str) -> object:
    """A statistic's value of the layer; for one with parts, ``{logged name: value}``."""
    statistic = STATISTICS[key]
    if statistic.parts:
        return {name: values[f"train-{name}_linear"] for name in statistic.logged_names}
    return values[f"train-{statistic.name}_linear"]


def check(key: str, value: object, rows: np.ndarray) -> None:
    expected = REFERENCES[key](rows)
    if isinstance(expected, dict):
        assert value.keys() == expected.keys()
        for name, part in expected.items():
            assert value[name] == pytest.approx(part, rel=1e-9, abs=1e-12), name
    elif key == "embed":
        assert value.shape == (rows.shape[0], 2)
        np.testing.assert_allclose(np.sort(value.var(axis=0))[::-1], expected, rtol=1e-9)
    elif key == "cov":
        np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12)
    elif isinstance(expected, int):
        assert value == expected
    else:
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_every_built_in_statistic_has_a_numpy_reference() -> None:
    assert sorted(REFERENCES) == BUILT_IN


@pytest.mark.parametrize("key", BUILT_IN)
def test_matches_numpy_on_the_concatenated_rows(key: str) -> None:
    steps = batches()
    values, _ = run([key], steps)
    check(key, logged(values, key), torch.cat(steps).numpy())


@pytest.mark.parametrize("key", BUILT_IN)
def test_a_checkpoint_restored_mid_epoch_gives_the_same_value(key: str) -> None:
    steps = batches()
    _, saved = run([key], steps[:4])
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    restored, _ = run([key], steps[4:], state=torch.load(buffer, weights_only=True))
    uninterrupted, _ = run([key], steps)
    check(key, logged(restored, key), torch.cat(steps).numpy())
    if key != "embed":  # the sample's rows come in another order
        for name in STATISTICS[key].logged_names:
            np.testing.assert_allclose(
                restored[f"train-{name}_linear"], uninterrupted[f"train-{name}_linear"], rtol=1e-12, atol=1e-14
            )


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        values, _ = run(BUILT_IN, batches()[rank::2])
        encoded = {name: value.tolist() if isinstance(value, np.ndarray) else value for name, value in values.items()}
        Path(folder, f"values{rank}.json").write_text(json.dumps(encoded))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    folder = tmp_path_factory.mktemp("ranks")
    context = mp.spawn(_worker, args=(str(folder),), nprocs=2, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the two ranks did not finish within {TIMEOUT_S} s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((folder / f"values{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("key", BUILT_IN)
def test_two_ranks_merge_to_one_process(two_ranks: list[dict], key: str) -> None:
    rows = torch.cat(batches()).numpy()
    for values in two_ranks:
        value = logged(values, key)
        check(key, np.asarray(value) if isinstance(value, list) else value, rows)
    for name in STATISTICS[key].logged_names:
        np.testing.assert_allclose(two_ranks[0][f"train-{name}_linear"], two_ranks[1][f"train-{name}_linear"], rtol=0)
