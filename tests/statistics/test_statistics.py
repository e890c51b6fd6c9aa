"""The statistics registry: keys, 0.1.x spellings, summaries and user statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import np_cov, np_eigenvalues
from torch import nn

from delve import SaturationTracker, Statistic, register_statistic
from delve import statistics as stats_module
from delve.engine.accumulator import Accumulator, Batch
from delve.engine.sample import ReservoirSample
from delve.engine.states import Sum
from delve.statistics.registry import STATISTICS, LayerSummary, resolve_stats, statistic_names
from delve.statistics.spectra import spectrum

CORE_KEYS = {
    "lsat": "saturation",
    "idim": "intrinsic-dimensionality",
    "cov": "covariance-matrix",
    "det": "covariance-log-determinant",
    "trc": "covariance-trace",
    "dtrc": "diagonal-trace",
    "embed": "embedded-sample",
}


@pytest.fixture
def clean_statistics():
    saved = dict(STATISTICS)
    yield
    STATISTICS.clear()
    STATISTICS.update(saved)


def test_core_keys_and_logged_names():
    for key, name in CORE_KEYS.items():
        assert STATISTICS[key].name == name
        assert "_" not in name  # the first '_' of a value name separates the layer
    assert statistic_names(["lsat", "trc"]) == {"lsat": "saturation", "trc": "covariance-trace"}
    assert not STATISTICS["cov"].scalar and not STATISTICS["embed"].scalar
    assert STATISTICS["embed"].needs_vectors and not STATISTICS["lsat"].needs_vectors


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("lsat", ["lsat"]),
        (["lsat", "lsat_eval"], ["lsat"]),
        (["idim_eval", "lsat", "idim"], ["idim", "lsat"]),
        (("det", "trc", "dtrc", "cov", "embed"), ["det", "trc", "dtrc", "cov", "embed"]),
    ],
)
def test_resolve_stats_keeps_order_and_accepts_legacy_spelling(given, expected):
    assert resolve_stats(given) == expected


@pytest.mark.parametrize("given", [["lsat", "entropy"], ["entropy_eval"], [3], []])
def test_resolve_stats_rejects_unknown(given):
    with pytest.raises(ValueError, match="lsat"):
        resolve_stats(given)


def sample_of(rows: np.ndarray) -> ReservoirSample:
    sample = ReservoirSample(size=len(rows))
    sample.add(torch.from_numpy(rows))
    return sample


def test_core_statistics_on_a_summary_match_numpy():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    cov = np_cov(rows)
    summary = LayerSummary(
        covariance=torch.from_numpy(cov),
        spectrum=spectrum(torch.from_numpy(cov), vectors=True),
        mean=torch.from_numpy(rows.mean(0)),
        threshold=0.9,
        count=200,
        accumulators={"embed": sample_of(rows[:10])},
    )
    values = np_eigenvalues(cov)
    k = int(np.flatnonzero(np.cumsum(values) / values.sum() >= 0.9)[0]) + 1
    assert summary.num_features == 6
    assert STATISTICS["idim"].compute(summary) == k
    assert STATISTICS["lsat"].compute(summary) == k / 6
    assert STATISTICS["trc"].compute(summary) == pytest.approx(np.trace(cov), rel=1e-13)
    assert STATISTICS["dtrc"].compute(summary) == pytest.approx(values.sum(), rel=1e-12)
    assert STATISTICS["det"].compute(summary) == pytest.approx(np.linalg.slogdet(cov)[1], rel=1e-10)
    np.testing.assert_array_equal(STATISTICS["cov"].compute(summary), cov)
    assert STATISTICS["embed"].compute(summary).shape == (10, 2)


def test_register_statistic_rejects_underscore_names(clean_statistics):
    with pytest.raises(ValueError, match="_"):
        register_statistic(Statistic("bad", "bad_name", lambda s: 0.0))


class RowCounter(Accumulator):
    """An accumulator that counts rows and sums the first feature."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", Sum(torch.int64))
        self.add_state("total", Sum(torch.float64))

    def accumulate(self, batch: Batch) -> None:
        flat = batch.rows.reshape(-1, batch.features)
        self.add_to("rows", batch.masked(torch.tensor(flat.shape[0])))
        self.add_to("total", batch.masked(flat[:, 0].double().sum()))


def test_user_statistic_with_accumulator_through_the_tracker(clean_statistics):
    register_statistic(Statistic("top", "top-eigenvalue", lambda s: float(s.spectrum.values[0])))
    register_statistic(
        Statistic(
            "m0",
            "first-mean",
            lambda s: float(s.accumulators["m0"].total) / int(s.accumulators["m0"].rows),
            accumulator=RowCounter,
        )
    )
    model = nn.Sequential(nn.Linear(4, 3))
    captured = []
    model[0].register_forward_hook(lambda m, i, o: captured.append(o.detach().double().numpy()))
    with SaturationTracker("x", modules=model, nosave=True, stats=["top", "m0", "lsat"]) as tracker:
        for _epoch in range(2):
            for _ in range(3):
                model(torch.randn(10, 4))
            values = tracker.add_saturations()
            rows = np.concatenate(captured)
            assert values["train-top-eigenvalue_0"] == pytest.approx(np_eigenvalues(np_cov(rows))[0], rel=1e-10)
            # The accumulator was reset with the covariance: only this epoch's rows.
            assert values["train-first-mean_0"] == pytest.approx(rows[:, 0].mean(), rel=1e-10)
            captured.clear()
    assert "m0" in stats_module.STATISTICS


def test_the_tracker_takes_a_statistic_by_key_or_by_logged_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    batch = torch.randn(50, 4)
    logged = []
    for stats in (["lsat", "idim"], ["saturation", "intrinsic-dimensionality"]):
        with SaturationTracker("run", modules=model, stats=stats, nosave=True) as tracker:
            assert tracker.stats == ["lsat", "idim"]
            model(batch)
            logged.append(tracker.add_saturations())
    assert logged[0] == logged[1] and set(logged[0]) == {"train-saturation_0", "train-intrinsic-dimensionality_0"}
