"""Batches holding NaN or Inf are left out whole, counted, logged and warned about once."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from cpu_half import needs_cpu_half_matmul
from torch import nn

from delve import SaturationTracker


def identity(d: int) -> nn.Linear:
    layer = nn.Linear(d, d)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d))
        layer.bias.zero_()
    return layer


def two_identities(d: int = 4) -> nn.Module:
    return nn.ModuleDict({"a": identity(d), "b": identity(d)}).double()


def run(model: nn.ModuleDict, batches) -> None:
    with torch.no_grad():
        for batch in batches:
            model["b"](model["a"](batch))


def nonfinite_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "NaN or Inf" in str(w.message)]


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_poisoned_batches_are_left_out_and_counted(tmp_path, ref, poison) -> None:
    model = two_identities()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat", "cov", "trc"])
    good = [torch.randn(16, 4, dtype=torch.float64) * (i + 1) for i in range(5)]
    bad = [good[0].clone(), good[1].clone()]
    bad[0][3, 2] = poison
    bad[1][:, 0] = poison
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(model, [good[0], bad[0], good[1], good[2], bad[1], good[3], good[4]])
        values = tracker.add_saturations()
    expected = ref.stats(torch.cat(good).numpy())
    for layer in ("a", "b"):
        assert values[f"train-nonfinite-batches_{layer}"] == 2
        np.testing.assert_allclose(values[f"train-covariance-matrix_{layer}"], expected["cov"], rtol=1e-12, atol=1e-12)
        assert values[f"train-saturation_{layer}"] == expected["saturation"]
        assert math.isfinite(values[f"train-covariance-trace_{layer}"])
    messages = nonfinite_warnings(record)
    assert len(messages) == 2  # once per layer
    for layer in ("a", "b"):
        assert any(f"'{layer}'" in m and " 2 batch" in m for m in messages)
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert frame.loc[0, "train-nonfinite-batches_a"] == 2
    tracker.close()


def test_warned_once_per_layer_and_epoch_and_counted_again_next_epoch(tmp_path) -> None:
    model = two_identities()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True)
    nan_batch = torch.full((4, 4), float("nan"), dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(
            model,
            [
                torch.randn(8, 4, dtype=torch.float64),
                nan_batch,
                nan_batch,
                torch.randn(8, 4, dtype=torch.float64),
                nan_batch,
            ],
        )
        first = tracker.compute_saturations()  # a look before logging: no second warning
        logged = tracker.add_saturations()
        assert len(nonfinite_warnings(record)) == 2
        assert first["train-nonfinite-batches_a"] == logged["train-nonfinite-batches_a"] == 3

        run(model, [torch.randn(8, 4, dtype=torch.float64)])
        clean = tracker.add_saturations()
        assert len(nonfinite_warnings(record)) == 2
        assert not any("nonfinite" in name for name in clean)  # nothing bogus on a clean epoch

        run(model, [nan_batch, torch.randn(8, 4, dtype=torch.float64)])
        again = tracker.add_saturations()
        assert again["train-nonfinite-batches_b"] == 1
        assert len(nonfinite_warnings(record)) == 4
    tracker.close()


def test_a_layer_whose_every_batch_was_poisoned_logs_only_the_count(tmp_path) -> None:
    model = two_identities()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True, stats=["lsat", "idim", "det"])
    with pytest.warns(RuntimeWarning) as record:
        run(model, [torch.full((4, 4), float("inf"), dtype=torch.float64)] * 3)
        values = tracker.add_saturations()
    assert sorted(m.split("'")[1] for m in nonfinite_warnings(record)) == ["a", "b"]
    assert values == {"train-nonfinite-batches_a": 3, "train-nonfinite-batches_b": 3}


def test_modes_are_counted_apart(tmp_path) -> None:
    model = two_identities()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, nosave=True)
    run(model, [torch.randn(8, 4, dtype=torch.float64), torch.full((2, 4), float("nan"), dtype=torch.float64)])
    model.eval()
    run(model, [torch.randn(8, 4, dtype=torch.float64)] + [torch.full((2, 4), float("nan"), dtype=torch.float64)] * 2)
    with pytest.warns(RuntimeWarning) as record:
        values = tracker.add_saturations()
    assert values["train-nonfinite-batches_a"] == 1
    assert values["eval-nonfinite-batches_a"] == 2
    assert len(nonfinite_warnings(record)) == 4
    assert all(math.isfinite(v) for v in values.values())


@needs_cpu_half_matmul
def test_half_precision_overflow_to_inf_is_rejected(tmp_path, ref) -> None:
    # float16 saturates at 65504: a layer whose output overflows produces Inf rows.
    layer = identity(3).half()
    tracker = SaturationTracker(str(tmp_path / "run"), modules=layer, nosave=True, stats=["cov"])
    fine = (torch.randn(32, 3) * 100).half()
    with torch.no_grad():
        layer(fine)
        layer(torch.full((4, 3), 60000.0).half() * 2)  # overflows to inf in float16
    with pytest.warns(RuntimeWarning, match="1 batch"):
        values = tracker.add_saturations()
    np.testing.assert_allclose(
        values["train-covariance-matrix_linear"], ref.cov(fine.double().numpy()), rtol=1e-12, atol=1e-9
    )
