"""Hooks running in several threads at once lose no update: concurrent equals serial."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from delve import SaturationTracker

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
            state = tracker._recorders[name].modes["train"]
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
    state = tracker._recorders["0"].modes["train"]
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
    assert tracker._recorders["0"].modes["train"].covariance.count == recorded[0]
    tracker.close()
