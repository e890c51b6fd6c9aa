"""What the cost table charges beyond the covariances: the live probes (every step) and the epoch's end."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.budget.cost_model import CostModel
from delve.budget.device_costs import POOLING_WEIGHT, relative_cost, training_rate
from delve.budget.layer_cost import LayerCost


class Dense(nn.Linear):
    """A Linear the input route does not take: its rows are sampled on the output route."""


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def test_the_probe_costs_one_moment_row_per_sample_and_a_pass_over_the_rows() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
    with SaturationTracker("p", modules=model, nosave=True, stats=["lsat", "probe"]) as tracker:
        tracker.set_targets(torch.tensor([0, 1, 2, 0, 1]), num_classes=3)
        model(torch.randn(5, 3, 6, 6))
        table = tracker.cost().set_index("layer")
    product, passes, _ = relative_cost("cpu", torch.float64, torch.float32)
    # Conv: 5 samples of 8 pooled channels and 3 one-hot columns (float64); pooling reads 180 rows of 8.
    conv = table.loc["0"]
    expected = (5 * 11 * 12 // 2 * product + 180 * 8 * POOLING_WEIGHT) / conv["training"]
    assert conv["probe"] == pytest.approx(expected)
    # Linear: 5 samples of 16 and 3 columns; its 5 rows are the samples.
    linear = table.loc["3"]
    assert linear["probe"] == pytest.approx((5 * 19 * 20 // 2 * product + 5 * 16 * POOLING_WEIGHT) / linear["training"])
    # The probe is part of the overhead, and of the share.
    for row in (conv, linear):
        covariance = (row["overhead"] - row["probe"]) * row["training"]
        assert covariance == pytest.approx(row["update"] * product + row["rows"] * row["features"] * passes)
    assert table["share"].sum() == pytest.approx(1.0)


def test_without_probes_the_probe_column_is_zero_and_not_printed() -> None:
    model = _mlp()
    with SaturationTracker("p", modules=model, nosave=True) as tracker:
        model(torch.randn(8, 32))
        table = tracker.cost()
    assert (table["probe"] == 0).all()
    assert "probe" not in str(table).splitlines()[0].split()


def test_the_budget_pays_the_probes_first_and_the_covariances_share_the_rest() -> None:
    # Linear layers on sequences: the probe merges one row per sequence, the covariance one per token.
    torch.manual_seed(0)
    model = nn.Sequential(Dense(256, 128), nn.ReLU(), Dense(128, 128))
    x = torch.randn(16, 64, 256)
    with SaturationTracker("b", modules=model, nosave=True, max_overhead=0.2) as plain:
        model(x)
        without = plain.cost().set_index("layer")
    with SaturationTracker("b", modules=model, nosave=True, max_overhead=0.2, stats=["lsat", "probe"]) as probed:
        probed.set_targets(torch.randint(0, 10, (16,)), num_classes=10)
        model(x)
        with_probes = probed.cost().set_index("layer")
    # Under the budget the whole (probes included) costs the budget...
    training = with_probes["training"].sum()
    spent = (with_probes["kept_overhead"] * with_probes["training"]).sum()
    assert spent == pytest.approx(0.2 * training, rel=0.02)
    # ... the probes every sample of it, so the covariances keep fewer rows than without them.
    assert (with_probes["kept_rows"] < without["kept_rows"]).all()
    probe_work = (with_probes["probe"] * with_probes["training"]).sum()
    covariance_with = spent - probe_work
    covariance_without = (without["kept_overhead"] * without["training"]).sum()
    assert covariance_with == pytest.approx(covariance_without - probe_work, rel=0.02)


def test_probes_that_alone_exceed_the_budget_are_said_once() -> None:
    model = nn.Sequential(Dense(32, 64), nn.ReLU(), Dense(64, 64))
    tracker = SaturationTracker("over", modules=model, nosave=True, max_overhead=0.01, stats=["lsat", "probe"])
    for _ in range(3):
        tracker.set_targets(torch.randint(0, 10, (256,)), num_classes=10)
        model(torch.randn(256, 32))
    with pytest.warns(RuntimeWarning) as record:  # with the notices of layers short of rows
        tracker.add_saturations()
    said = [str(w.message) for w in record if "live probes" in str(w.message)]
    assert len(said) == 1
    assert re.search(r"^delve \(over\): the live probes alone are estimated at [0-9.]+ times", said[0])
    share = tracker._recording.settings.costs.probe_share()
    # 256 samples x (64 + 10)(64 + 11)/2 product multiply-adds per layer, against 1 % of the training.
    product = relative_cost("cpu", torch.float64, torch.float32).product
    work = 256 * (74 * 75 // 2 * product + 64 * POOLING_WEIGHT) * 2
    assert share == pytest.approx(work / (0.01 * 3 * 256 * (32 * 64 + 64 * 64)))
    model(torch.randn(256, 32))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        tracker.add_saturations()
    assert not any("live probes" in str(w.message) for w in again)  # once per tracker
    tracker.close()


def test_the_epoch_end_is_estimated_against_the_epochs_training_and_missing_before_one_ended() -> None:
    model = _mlp()
    with SaturationTracker("e", modules=model, nosave=True) as tracker:
        for _ in range(4):
            model(torch.randn(16, 32))
        assert tracker.cost()["epoch_overhead"].isna().all()
        tracker.add_saturations()
        model.eval()
        model(torch.randn(16, 32))
        model.train()
        for _ in range(6):
            model(torch.randn(16, 32))
        tracker.add_saturations()
        table = tracker.cost().set_index("layer")
    rate = training_rate("cpu", torch.float32)
    for layer, d in (("0", 64), ("2", 10)):
        row = table.loc[layer]
        # The last epoch: 6 training batches, two modes (train and eval) to decompose.
        expected = 2 * 2.5e-10 * d**3 * rate / (row["training"] * 6)
        assert row["epoch_overhead"] == pytest.approx(expected)
    assert "epoch_overhead" in str(tracker.cost()).splitlines()[0].split()


def test_probe_share_is_zero_without_a_budget_and_counts_every_layer() -> None:
    assert CostModel().probe_share() == 0.0
    model = CostModel(max_overhead=0.1)
    model.note(LayerCost("a", 100, 8, 100, 64, probe_samples=100, probe_width=10))
    model.note(LayerCost("b", 100, 8, 100, 64, probe_samples=100, probe_width=10))
    assert model.probe_share() == pytest.approx(2 * (100 * 55 + 100 * 8 * POOLING_WEIGHT) / (0.1 * 2 * 3 * 64 * 100))
    assert math.isfinite(model.rate("a")) and model.rate("a") <= 1.0
