"""One rule for non-finite batches, on every merge route and in every accumulator.

A batch holding NaN or Inf is left out whole: by the covariance, by the
``embed`` sample and by the extra accumulators alike, whichever route the
covariance takes (CPU, sliced tall or wide batches, the accelerator route that
keeps its decisions on the device, float64 or float32 products). A finite
float16 batch is never mistaken for a non-finite one. Every route is forced on
the CPU here, so CI runs them all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cpu_half import needs_cpu_half_autocast, needs_cpu_half_matmul
from torch import nn

from delve import SaturationTracker
from delve.engine import products as kernels
from delve.engine.activity import MeanAbsoluteActivity
from delve.statistics.registry import STATISTICS, Statistic, register_statistic

ROUTES = ["cpu", "cpu-sliced", "device", "device-sliced"]


def force_route(monkeypatch, route: str) -> None:
    if route.endswith("sliced"):
        monkeypatch.setattr(kernels, "SLICE_BYTES", 4096)
        monkeypatch.setattr(kernels, "DEVICE_SLICE_BYTES", 4096)
    if route.startswith("device"):
        monkeypatch.setattr(kernels, "decides_on_device", lambda device: True)


@pytest.fixture
def rows_seen():
    """A statistic reporting how many rows its extra accumulator merged, and their mean |x|."""
    statistic = Statistic(
        "seen",
        "rows-seen",
        lambda summary: summary.accumulators["seen"].count,
        accumulator=MeanAbsoluteActivity,
    )
    register_statistic(statistic, replace=True)
    yield statistic
    STATISTICS.pop("seen", None)


def identity(d: int, dtype: torch.dtype = torch.float32) -> nn.Linear:
    layer = nn.Linear(d, d)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d))
        layer.bias.zero_()
    return layer.to(dtype)


@needs_cpu_half_matmul
@pytest.mark.parametrize("rows", [40, 96])  # fewer and more rows than features
@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_finite_float16_batch_is_kept_on_every_route(monkeypatch, ref, route, precision, rows) -> None:
    # Summing this batch in float16 overflows (|sum| > 65504) although every value is finite.
    force_route(monkeypatch, route)
    layer = identity(48, torch.float16)
    tracker = SaturationTracker("run", modules=layer, nosave=True, stats=["cov"], precision=precision)
    batch = (torch.randn(rows, 48) * 30 + 200).half()
    with torch.no_grad():
        layer(batch)
    values = tracker.add_saturations()
    assert "train-nonfinite-batches_linear" not in values
    expected = ref.cov(batch.double().numpy())
    assert ref.rel_fro(values["train-covariance-matrix_linear"], expected) < 1e-6
    tracker.close()


@needs_cpu_half_matmul
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_float16_output_of_a_wide_layer_at_batch_1024_is_kept(ref, precision) -> None:
    """The case found in review: nn.Linear(64, 2048).half() at batch 1024 (a sliced, wide batch)."""
    torch.manual_seed(1)
    layer = nn.Linear(64, 2048).half()
    tracker = SaturationTracker("run", modules=layer, nosave=True, stats=["trc"], precision=precision)
    with torch.no_grad():
        out = layer((torch.randn(1024, 64) + 5).half())
    assert not bool(torch.isfinite(out.sum()))  # the sum overflows float16 ...
    assert bool(torch.isfinite(out).all())  # ... although every value is finite
    values = tracker.add_saturations()
    assert "train-nonfinite-batches_linear" not in values
    expected = float(np.trace(ref.cov(out.double().numpy())))
    assert values["train-covariance-trace_linear"] == pytest.approx(expected, rel=1e-6)
    tracker.close()


@needs_cpu_half_autocast
class Dense(nn.Linear):
    """A Linear on the output route (the input route takes exact classes only): its half-precision outputs."""


def test_autocast_float16_training_loses_no_batch(ref) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(Dense(32, 2048), nn.ReLU(), nn.Linear(2048, 8))
    tracker = SaturationTracker("run", modules=model, nosave=True, stats=["trc"])
    captured = []
    handle = model[0].register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(torch.randn(1024, 32) + 5).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle.remove()
    assert all(out.dtype == torch.float16 for out in captured)
    assert not all(bool(torch.isfinite(out.sum())) for out in captured)  # float16 sums overflow
    values = tracker.add_saturations()
    assert not any(name.startswith("train-nonfinite") for name in values)
    rows = torch.cat(captured).double().numpy()
    assert values["train-covariance-trace_0"] == pytest.approx(float(np.trace(ref.cov(rows))), rel=1e-9)
    tracker.close()


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("route", ROUTES)
def test_every_accumulator_rejects_the_same_batches(monkeypatch, ref, rows_seen, route, precision) -> None:
    force_route(monkeypatch, route)
    d = 12
    layer = identity(d, torch.float64)
    tracker = SaturationTracker(
        "run", modules=layer, nosave=True, stats=["cov", "seen", "embed", "dorm"], precision=precision, embed_size=1000
    )
    generator = torch.Generator().manual_seed(5)
    clean = [torch.randn(n, d, generator=generator, dtype=torch.float64) + 3 for n in (200, 40, 300)]
    poisoned = [torch.randn(n, d, generator=generator, dtype=torch.float64) for n in (200, 6)]
    poisoned[0][150, 4] = float("nan")  # in the last slice of a sliced batch
    poisoned[1][0, 0] = float("inf")  # a wide-ish batch: fewer rows than twice the features
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="2 batch"):
        for batch in (clean[0], poisoned[0], clean[1], poisoned[1], clean[2]):
            layer(batch)
        values = tracker.add_saturations()
    accepted = torch.cat(clean).numpy()
    assert values["train-nonfinite-batches_linear"] == 2
    assert values["train-rows-seen_linear"] == accepted.shape[0]
    bound = 1e-12 if precision == "float64" else 1e-6
    assert ref.rel_fro(values["train-covariance-matrix_linear"], ref.cov(accepted)) < bound
    embedded = values["train-embedded-sample_linear"]
    assert embedded.shape == (accepted.shape[0], 2)
    assert np.isfinite(embedded).all()
    # The sample holds exactly the accepted rows: their projections have the
    # spread of the accepted data along the top two eigendirections.
    top = ref.eigenvalues(ref.cov(accepted))[:2]
    np.testing.assert_allclose(np.sort(embedded.var(axis=0))[::-1], top, rtol=1e-6)
    tracker.close()
