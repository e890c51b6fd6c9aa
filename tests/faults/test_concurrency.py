"""Hooks running in several threads at once lose no update: concurrent equals serial."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.engine.activity import MeanAbsoluteActivity
from delve.statistics.registry import STATISTICS, Statistic, register_statistic

THREADS = 8
BATCHES_PER_THREAD = 12


def model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 8)).double()


def batches() -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(11)
    return [
        [
            torch.randn(int(n), 16, generator=generator, dtype=torch.float64) + t
            for n in torch.randint(5, 40, (BATCHES_PER_THREAD,), generator=generator)
        ]
        for t in range(THREADS)
    ]


def concurrent_run(net: nn.Module, work: list[list[torch.Tensor]], train_threads: bool = True) -> None:
    start = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def worker(chunk: list[torch.Tensor]) -> None:
        try:
            start.wait()
            with torch.no_grad():
                for batch in chunk:
                    net(batch)
        except BaseException as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_concurrent_hooks_equal_serial(tmp_path, ref) -> None:
    work = batches()
    serial_net, threaded_net = model(), model()
    serial = SaturationTracker("serial", modules=serial_net, nosave=True, stats=["cov", "lsat", "trc"])
    threaded = SaturationTracker("threaded", modules=threaded_net, nosave=True, stats=["cov", "lsat", "trc"])

    with torch.no_grad():
        for chunk in work:
            for batch in chunk:
                serial_net(batch)
    concurrent_run(threaded_net, work)

    rows = sum(batch.shape[0] for chunk in work for batch in chunk)
    for name in ("0", "2", "4"):
        for tracker in (serial, threaded):
            state = tracker._recording.recorders[name].modes["train"]
            assert state.covariance.count == rows
            assert state.forward_calls == THREADS * BATCHES_PER_THREAD

    expected, actual = serial.add_saturations(), threaded.add_saturations()
    assert list(actual) and set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-12, atol=1e-12, err_msg=key)

    # And both against numpy on every output of the first layer.
    with torch.no_grad():
        outputs = torch.cat([serial_net[0](batch) for chunk in work for batch in chunk])
    np.testing.assert_allclose(actual["train-covariance-matrix_0"], ref.cov(outputs.numpy()), rtol=1e-12, atol=1e-12)


def test_threads_in_both_modes_and_a_shared_interval(tmp_path) -> None:
    """log_interval and max_samples count per layer and mode, also across threads."""
    net = model()
    tracker = SaturationTracker("t", modules=net, nosave=True, log_interval=3, max_samples=10_000)
    work = [[torch.randn(7, 16, dtype=torch.float64) for _ in range(30)] for _ in range(4)]
    concurrent_run(net, work)
    state = tracker._recording.recorders["0"].modes["train"]
    calls = 4 * 30
    assert state.forward_calls == calls
    # Exactly every third call was recorded, whichever thread made it.
    assert state.covariance.count == 7 * len(range(0, calls, 3))
    tracker.close()


def test_add_saturations_while_threads_record(tmp_path) -> None:
    """Reading while hooks write neither crashes nor loses a batch across the epoch boundary."""
    net = model()
    tracker = SaturationTracker("t", modules=net, nosave=True, stats=["lsat"], reset_covariance=False)
    stop = threading.Event()
    recorded = [0]

    def feed() -> None:
        with torch.no_grad():
            while not stop.is_set():
                net(torch.randn(5, 16, dtype=torch.float64))
                recorded[0] += 5

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        for _ in range(20):
            values = tracker.compute_saturations()
            assert all(0 <= value <= 1 for value in values.values())
    finally:
        stop.set()
        thread.join()
    assert tracker._recording.recorders["0"].modes["train"].covariance.count == recorded[0]
    tracker.close()


class ForwardDuringCompute:
    """A statistic that runs a forward pass in another thread the first time it is computed.

    So a batch arrives, deterministically, in the middle of ``add_saturations``:
    after the covariances were read and before the other statistics are.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.done = False

    def __call__(self, summary) -> int:
        if not self.done:
            self.done = True
            thread = threading.Thread(target=self._forward)
            thread.start()
            thread.join()
        return summary.count

    def _forward(self) -> None:
        with torch.no_grad():
            self.net(torch.randn(9, 16, dtype=torch.float64))


@pytest.fixture
def probe_statistics():
    saved = dict(STATISTICS)
    yield
    STATISTICS.clear()
    STATISTICS.update(saved)


def test_every_statistic_of_a_layer_sees_the_rows_of_its_covariance(probe_statistics) -> None:
    net = model()
    probe = ForwardDuringCompute(net)
    register_statistic(Statistic("in-covariance", "rows-in-covariance", probe))
    register_statistic(
        Statistic("extra", "rows-in-extra", lambda s: s.accumulators["extra"].count, accumulator=MeanAbsoluteActivity)
    )
    tracker = SaturationTracker(
        "t",
        modules=net,
        nosave=True,
        stats=["in-covariance", "extra", "embed"],
        embed_size=10_000,
        reset_covariance=False,
    )
    with torch.no_grad():
        for rows in (20, 30):
            net(torch.randn(rows, 16, dtype=torch.float64))
    values = tracker.add_saturations()
    assert probe.done
    for layer in ("0", "2", "4"):
        count = values[f"train-rows-in-covariance_{layer}"]
        assert count == 50
        assert values[f"train-rows-in-extra_{layer}"] == count, layer
        assert values[f"train-embedded-sample_{layer}"].shape == (count, 2), layer
    # The batch that arrived mid-computation is kept for the next epoch, in every accumulator.
    probe.done = True
    values = tracker.add_saturations()
    assert values["train-rows-in-covariance_0"] == values["train-rows-in-extra_0"] == 59
    tracker.close()


def test_threads_recording_through_epoch_boundaries_lose_no_row(probe_statistics) -> None:
    """Every row lands in exactly one epoch, in the covariance and in the extras alike."""
    net = model()
    register_statistic(
        Statistic("extra", "rows-in-extra", lambda s: s.accumulators["extra"].count, accumulator=MeanAbsoluteActivity)
    )
    register_statistic(Statistic("count", "rows-in-covariance", lambda s: s.count))
    tracker = SaturationTracker("t", modules=net, nosave=True, stats=["count", "extra", "embed"], embed_size=50)
    fed = [0, 0]
    start = threading.Barrier(3)

    def feed(slot: int) -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(150):
                net(torch.randn(3, 16, dtype=torch.float64))
                fed[slot] += 3

    threads = [threading.Thread(target=feed, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    start.wait()
    epochs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while any(thread.is_alive() for thread in threads):
            epochs.append(tracker.add_saturations())
        for thread in threads:
            thread.join()
        epochs.append(tracker.add_saturations())
    # An epoch may end before any thread fed a row: the tracker says so (once), and says nothing else.
    empty = any(not epoch for epoch in epochs)
    assert [("no recorded forward pass" in str(w.message)) for w in caught] == ([True] if empty else [])
    for epoch in epochs:
        for layer in ("0", "2", "4"):
            count = epoch.get(f"train-rows-in-covariance_{layer}", 0)
            assert epoch.get(f"train-rows-in-extra_{layer}", 0) == count
            if count:
                assert epoch[f"train-embedded-sample_{layer}"].shape == (min(count, 50), 2)
    total = sum(epoch.get("train-rows-in-covariance_0", 0) for epoch in epochs)
    assert total == sum(fed) == 900
    tracker.close()


def test_a_failing_statistic_loses_no_row(probe_statistics) -> None:
    """add_saturations that raises leaves the epoch's rows for the next call, batches recorded meanwhile too."""
    net = model()
    failing = [True]

    def count_or_fail(summary) -> int:
        if failing[0]:
            failing[0] = False
            with torch.no_grad():
                net(torch.randn(4, 16, dtype=torch.float64))  # arrives while the computation runs
            raise RuntimeError("a user statistic failed")
        return summary.count

    register_statistic(Statistic("fragile", "fragile-count", count_or_fail))
    register_statistic(
        Statistic("extra", "rows-in-extra", lambda s: s.accumulators["extra"].count, accumulator=MeanAbsoluteActivity)
    )
    tracker = SaturationTracker("t", modules=net, nosave=True, stats=["fragile", "extra", "embed"], embed_size=100)
    with torch.no_grad():
        net(torch.randn(10, 16, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="user statistic failed"):
        tracker.add_saturations()
    values = tracker.add_saturations()
    assert values["train-fragile-count_0"] == values["train-rows-in-extra_0"] == 14
    assert values["train-embedded-sample_0"].shape == (14, 2)
    assert tracker.epoch == 1
    tracker.close()
