"""The cost model and the budget: estimates against hand-counted work, sampled rows that stay honest.

``max_overhead`` keeps a random subset of each layer's rows per batch. The
sample must be uniform (its covariance averages to the exact one over
seeds), reproducible from a checkpoint, merge exactly across ranks, and say
what it rests on (rows logged, too few rows warned about).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import np_cov, rel_fro
from torch import nn

from delve import SaturationTracker
from delve.budget import cost_model
from delve.budget.cost_model import (
    MAX_BATCHES_PER_DRAW,
    MAX_BATCHES_PER_WHOLE_DRAW,
    ROWS_PER_DRAW,
    WHOLE_SHARE,
    CostModel,
    rows_per_feature_within,
)
from delve.budget.device_costs import relative_cost
from delve.budget.layer_cost import LayerCost
from delve.budget.row_sampler import RowSampler
from delve.engine.accumulator import Accumulator, Batch
from delve.engine.states import BottomK


class Dense(nn.Linear):
    """A Linear the input route does not take (a subclass may have its own forward): these tests sample rows."""


def test_cost_table_counts_the_work_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 64))
    with SaturationTracker("c", modules=model, nosave=True) as tracker:
        model(torch.randn(5, 3, 6, 6))
        table = tracker.cost().set_index("layer")
    conv, linear = table.loc["0"], table.loc["3"]
    # Conv: 5 x 36 positions of 8 channels; weights 8 x 3 x 3 x 3 applied at each position.
    assert (conv["rows"], conv["features"]) == (180, 8)
    assert conv["update"] == 180 * (8 * 9 // 2)  # the upper triangle of the Gram product
    assert conv["training"] == 3 * (8 * 3 * 3 * 3) * 180
    # Linear: 5 rows of 64; weights 64 x 288 applied once per row.
    assert (linear["rows"], linear["features"]) == (5, 64)
    assert linear["update"] == 5 * (64 * 65 // 2)
    assert linear["training"] == 3 * 64 * 288 * 5
    # On a CPU, float64 products: a product multiply-add costs 5 training ones, a pass over an element 24.
    product, passes, _ = relative_cost("cpu", torch.float64, torch.float32)
    expected = 5 * (64 * 65 // 2 * product + 64 * passes) / linear["training"]
    assert linear["overhead"] == pytest.approx(expected)
    assert table["share"].sum() == pytest.approx(1.0)
    assert (table["kept_rows"] == table["rows"]).all()  # no budget: every row


def test_costly_tracking_is_named_once_with_the_tracker_the_formula_and_the_remedy(monkeypatch) -> None:
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 8))  # d_out / d_in = 16
    tracker = SaturationTracker("runs/wide", modules=model, nosave=True)
    with torch.no_grad():
        model(torch.randn(32, 64))
    # By hand, on a CPU: a row of layer 0 costs d(d+1)/2 float64 products of 5 training multiply-adds each
    # and a pass of 24 per feature; training runs at 5e10 multiply-adds per second (layer_cost's figure).
    d = 1024
    seconds = 32 * (d * (d + 1) // 2 * 5 + d * 24) / 5e10
    assert tracker._recording.settings.costs.seconds({"0": 32}) == pytest.approx(seconds)
    # The estimate (about 2 ms) is under the threshold: however large the share, nothing is said...
    assert tracker.cost().set_index("layer").loc["0", "overhead"] > 0.25
    monkeypatch.setattr(cost_model, "EXPENSIVE_SECONDS", seconds * 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker.add_saturations()
    # ... until an epoch's estimate passes it.
    monkeypatch.setattr(cost_model, "EXPENSIVE_SECONDS", seconds * 0.5)
    with torch.no_grad():
        model(torch.randn(32, 64))
    message = (
        rf"^delve \(runs/wide\): tracking every row is estimated at \d+% of the tracked layers' training work, "
        rf"about {seconds:.2g} s in this epoch; most of it is in '0' \(d = 1024\): a layer of width d pays "
        r"d\(d\+1\)/2 multiply-adds per row\. SaturationTracker\(\.\.\., max_overhead=0\.05\)"
    )
    with pytest.warns(UserWarning, match=message):
        tracker.add_saturations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.randn(32, 64))
        tracker.add_saturations()  # said once
    tracker.close()


def test_a_small_experiment_is_not_warned_about_however_large_its_share() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SaturationTracker("toy", modules=model, nosave=True) as tracker:
            for _ in range(5):
                for _ in range(100):
                    model(torch.randn(32, 8))
                tracker.add_saturations()
            table = tracker.cost()
    assert (table["overhead"] > 0.5).all()  # tracking costs more than half of training these layers...
    assert tracker._recording.settings.costs.expensive()[0] > cost_model.EXPENSIVE_SHARE
    # ... but 500 batches of it are estimated at well under a millisecond.
    assert tracker._recording.settings.costs.seconds({"0": 16_000, "2": 16_000}) < 1e-3 < cost_model.EXPENSIVE_SECONDS


def test_cost_table_prints_percentages_and_fits_a_terminal() -> None:
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    with SaturationTracker("c", modules=model, nosave=True) as tracker:
        with pytest.raises(RuntimeError, match=r"no tracked layer has recorded one yet.*after the model's first batch"):
            tracker.cost()
        model(torch.randn(32, 16))
        table = tracker.cost()
    text = str(table)
    lines = text.splitlines()
    # every column shown, none hidden behind "...", but those that hold nothing yet (no probes, no epoch)
    assert lines[0].split() == [c for c in table.columns if c not in ("probe", "epoch_overhead")]
    assert (table["probe"] == 0).all() and table["epoch_overhead"].isna().all()
    assert max(len(line) for line in lines) <= 80
    by_layer = {line.split()[0]: line.split() for line in lines[1:]}
    for _, row in table.iterrows():
        cells = by_layer[row["layer"]]
        assert int(cells[1]) == row["rows"] and int(cells[2]) == row["features"]
        # overhead, share and kept_overhead are fractions, printed as percentages
        for index, column in ((5, "overhead"), (6, "share"), (8, "kept_overhead")):
            percent = 100 * row[column]
            assert cells[index] == (f"{percent:.0f}%" if percent >= 10 else f"{percent:.1f}%")
    assert table.loc[0, "update"] == 32 * 64 * 65 // 2 and by_layer["0"][3] == "66.6k"
    assert type(table[["layer", "overhead"]]) is pd.DataFrame  # a selection prints as pandas does


def test_water_filling_gives_equal_rows_per_feature_up_to_the_rows_a_layer_has() -> None:
    costs = [
        LayerCost("narrow", rows=10_000, features=64, applications=10_000, weight_elements=64 * 64),
        LayerCost("wide", rows=10_000, features=512, applications=10_000, weight_elements=512 * 64),
        LayerCost("scarce", rows=40, features=256, applications=40, weight_elements=256 * 256),
    ]
    model = CostModel(max_overhead=0.05)
    for cost in costs:
        model.note(cost)
    kept = {c.layer: model.rows_to_keep(c.layer, c.rows) for c in costs}
    level = rows_per_feature_within(costs, 0.05 * sum(c.training for c in costs))
    assert kept["scarce"] == 40  # fewer rows than the common level: keeps them all
    for name in ("narrow", "wide"):
        cost = next(c for c in costs if c.layer == name)
        assert level * cost.features <= kept[name] < level * cost.features + 1  # rounded up to a whole row
    spent = sum(kept[c.layer] * c.work_per_row for c in costs)
    one_row_each = sum(c.work_per_row for c in costs)
    assert spent <= 0.05 * sum(c.training for c in costs) + one_row_each


def test_layers_that_cost_next_to_nothing_keep_every_row() -> None:
    wide = LayerCost("qkv", rows=4096, features=576, applications=4096, weight_elements=192 * 576)
    head = LayerCost("head", rows=64, features=10, applications=64, weight_elements=10 * 192)
    mid = LayerCost("mid", rows=4096, features=96, applications=4096, weight_elements=96 * 96)
    model = CostModel(max_overhead=0.05)
    for cost in (wide, head, mid):
        model.note(cost)
    budget = 0.05 * (wide.training + head.training + mid.training)
    assert head.work <= WHOLE_SHARE * budget < head.work + mid.work  # only the head is that cheap
    assert model.rows_to_keep("head", 64) == 64
    assert model.rows_to_keep("qkv", 4096) < 4096 and model.rows_to_keep("mid", 4096) < 4096
    # The others share what is left: the common level of rows per feature, as without the head.
    level = rows_per_feature_within([wide, mid], budget - head.work)
    for cost in (wide, mid):
        assert level * cost.features <= model.rows_to_keep(cost.layer, 4096) < level * cost.features + 1
    assert model.overhead_for("head", 2.0) == math.inf  # it has no more rows to give


def test_the_sampler_keeps_distinct_rows_spread_over_the_batch() -> None:
    sampler = RowSampler(seed=3)
    counts = np.zeros(103)
    for _ in range(3000):
        index = sampler.indices(103, 10, torch.device("cpu")).numpy()
        assert len(set(index)) == 10 and index.min() >= 0 and index.max() < 103
        counts[index] += 1
    # Every row is kept with probability k / n (strata of 10 or 11 rows): 1/10 or 1/11 of the draws.
    assert counts.min() >= 3000 / 11 * 0.8 and counts.max() <= 3000 / 10 * 1.2


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.flatten(2).transpose(1, 2),  # a convolution's (N, H*W, C) view: strided rows
        lambda x: x.permute(0, 2, 3, 1),  # (N, H, W, C): strided, four dimensions
        lambda x: x.flatten(2).transpose(1, 2).contiguous(),  # rows that lie contiguous
        lambda x: x.flatten(1, 2),  # (N*C, H, W) read as rows of W: a plain 2-d reshape
    ],
)
def test_the_sampler_picks_the_rows_at_its_indices_whatever_the_layout(make) -> None:
    batch = make(torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0)))
    d = batch.shape[-1]
    for k in (1, 7, batch.numel() // d - 1):
        index = RowSampler(seed=k).indices(batch.numel() // d, k, batch.device)
        kept = RowSampler(seed=k).select(batch, k)
        reference = batch.numpy().reshape(-1, d)[index.numpy()]  # numpy copies the view into row order
        np.testing.assert_array_equal(kept.numpy(), reference)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution the input route does not take (a subclass): its strided output rows are picked."""


def test_rows_picked_out_of_a_strided_view_are_charged_and_kept_whole_when_that_is_cheaper() -> None:
    conv = PointwiseConv(16, 64, 1)
    with SaturationTracker("g", modules=conv, nosave=True, max_overhead=0.05) as tracker:
        with torch.no_grad():
            conv(torch.randn(8, 16, 16, 16))
        costs = tracker._recording.settings.costs.costs
    (cost,) = costs
    # The (N, H*W, C) rows are strided: each kept row pays its gather on top of product and passes.
    assert cost.gather_weight == relative_cost("cpu", torch.float32, torch.float32).gather > 0
    assert cost.sampled_work_per_row == cost.work_per_row + 64 * cost.gather_weight
    linear = LayerCost("fc", rows=1000, features=64, applications=1000, weight_elements=64 * 64)
    assert linear.sampled_work_per_row == linear.work_per_row  # contiguous rows: nothing extra
    # A budget that would keep nearly every row keeps them all: picking them would cost more.
    strided = LayerCost("c", 1000, 64, 1000, 64 * 64, product_weight=1.0, pass_weight=1.0, gather_weight=20.0)
    big = LayerCost("big", 100_000, 64, 100_000, 64 * 64, product_weight=1.0, pass_weight=1.0, gather_weight=20.0)
    budget = 990 * (strided.sampled_work_per_row + big.sampled_work_per_row)  # 990 rows each, picked
    model = CostModel(max_overhead=budget / (strided.training + big.training))
    model.note(strided)
    model.note(big)
    assert 990 <= model.rows_to_keep("big", 100_000) <= 991  # rounded up to a whole row
    assert not strided.worth_sampling(990) and strided.worth_sampling(100)
    assert model.rows_to_keep("c", 1000) == 1000  # all 1000 rows cost less than 990 picked ones
    model = CostModel(max_overhead=strided.work * 0.3 / strided.training)
    model.note(strided)
    kept = model.rows_to_keep("c", 1000)
    assert kept < 1000 and strided.kept_work(kept) <= strided.work * 0.3 + strided.sampled_work_per_row
    # Kept densely, a strided gather reads each cache line once: no more than one read of the batch.
    assert strided.kept_work(10) == 10 * strided.sampled_work_per_row
    assert strided.kept_work(500) == 500 * strided.work_per_row + 1000 / 16 * 64 * 20.0


def test_a_layer_with_a_small_share_draws_more_rows_from_fewer_batches_first_batch_always() -> None:
    layer = Dense(4, 32)
    tracker = SaturationTracker("p", modules={"linear": layer}, nosave=True, stats=["lsat"], max_overhead=0.002)
    generator = torch.Generator().manual_seed(5)
    batches, epochs = 60, 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # few rows per feature: warned about, expected
        for _ in range(epochs):
            with torch.no_grad():
                for _ in range(batches):
                    layer(torch.randn(2048, 4, generator=generator))
            costs = tracker._recording.settings.costs
            share, period = costs.rows_to_keep("linear", 2048), costs.period("linear")
            rows = tracker.add_saturations()["train-rows_linear"]
            assert share < ROWS_PER_DRAW / 2 and period == min(math.ceil(ROWS_PER_DRAW / share), MAX_BATCHES_PER_DRAW)
            drawn, left = divmod(rows - share, share * period)  # the first batch: its share; others: m shares
            assert left == 0
            # Each later batch is drawn from with probability 1 / m: a binomial count, within 5 sigma.
            mean, sigma = (batches - 1) / period, math.sqrt((batches - 1) / period * (1 - 1 / period))
            assert abs(drawn - mean) <= 5 * sigma
    tracker.close()


def test_the_batch_coin_is_saved_and_a_state_saved_without_it_still_loads() -> None:
    sampler = RowSampler(seed=4)
    sampler.indices(50, 5, torch.device("cpu"))
    tossed = [sampler.chance(0.5) for _ in range(7)]
    state = sampler.state_dict()
    restored = RowSampler(seed=9)
    restored.load_state_dict(state)
    assert [restored.chance(0.5) for _ in range(40)] == [sampler.chance(0.5) for _ in range(40)]
    assert True in tossed and False in tossed
    assert torch.equal(restored.indices(50, 5, torch.device("cpu")), sampler.indices(50, 5, torch.device("cpu")))
    older = RowSampler(seed=4)  # a checkpoint from before batches were drawn from: its devices only
    older.load_state_dict({"cpu": state["cpu"]})
    fresh = RowSampler(seed=4)
    assert [older.chance(0.5) for _ in range(40)] == [fresh.chance(0.5) for _ in range(40)]  # the coin restarts


def _budget_run(seed: int, batches: list[torch.Tensor], max_overhead: float) -> tuple[dict, int]:
    """Saturation values of one budgeted epoch, and the layer's period (batches per draw)."""
    layer = Dense(12, 48).double()
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 12, dtype=torch.float64))
        layer.bias.zero_()
    tracker = SaturationTracker("b", modules={"linear": layer}, nosave=True, stats=["cov"], max_overhead=max_overhead)
    tracker._recording.settings.sampler.seed = seed
    tracker._recording.settings.sampler.load_state_dict({})  # reseeded: rows and batches drawn from seed
    with torch.no_grad():
        for batch in batches:
            layer(batch)
    period = tracker._recording.settings.costs.period("linear")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = tracker.add_saturations()
    tracker.close()
    # A small budget leaves fewer than 20 rows per feature: the tracker says so, and says nothing else.
    sparse = values["train-rows_linear"] < 20 * 48
    assert [("fewer than 20 per feature" in str(w.message)) for w in caught] == ([True] if sparse else [])
    return values, period


# 0.5 keeps a share of every batch; 0.05 a tenth of that, m times as many rows from one batch in m.
@pytest.mark.parametrize(("max_overhead", "drawn_from"), [(0.5, "every batch"), (0.05, "some batches")])
def test_the_sampled_covariance_averages_to_the_exact_one(max_overhead: float, drawn_from: str) -> None:
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(2000, 12, generator=generator, dtype=torch.float64) * 3 + 1 for _ in range(12)]
    layer = Dense(12, 48).double()
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 12, dtype=torch.float64))
        layer.bias.zero_()
        exact = np_cov(torch.cat([layer(b) for b in batches]).numpy())
    estimates = []
    for seed in range(200):
        values, period = _budget_run(seed, batches, max_overhead)
        assert (period == 1) == (drawn_from == "every batch")
        rows = values["train-rows_linear"]
        assert 0 < rows < 24_000  # a subset was kept
        # The population covariance of m rows is low by (m - 1) / m on average: undone per estimate.
        estimates.append(values["train-covariance-matrix_linear"] * rows / (rows - 1))
    single = np.mean([rel_fro(e, exact) for e in estimates])
    average = rel_fro(np.mean(estimates, axis=0), exact)
    # One estimate is off by sampling noise; the average of 200 by about 1/sqrt(200) of it.
    assert single > 0.02
    assert average < single / math.sqrt(200) * 3


def test_restoring_mid_epoch_under_a_budget_continues_exactly() -> None:
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(300, 12, generator=generator, dtype=torch.float64) for _ in range(24)]

    def tracker_and_layer():
        layer = nn.Linear(12, 48).double()
        torch.manual_seed(0)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(48, 12, dtype=torch.float64))
            layer.bias.zero_()
        return layer, SaturationTracker("r", modules=layer, nosave=True, stats=["cov", "lsat"], max_overhead=0.2)

    first_layer, first = tracker_and_layer()
    second_layer, second = tracker_and_layer()
    with torch.no_grad():
        for batch in batches[:12]:
            first_layer(batch)
        state = first.state_dict()  # saving merges the rows held back
        rows_before = first._recording.recorders["linear"].modes["train"].covariance.count
        second.load_state_dict(state)
        for batch in batches[12:]:
            first_layer(batch)
            second_layer(batch)
    # The layer draws from some batches (period > 1), on both sides of the checkpoint.
    assert first._recording.settings.costs.period("linear") > 1
    expected, actual = first.add_saturations(), second.add_saturations()
    assert 0 < rows_before < expected["train-rows_linear"]
    assert list(actual) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
    first.close()
    second.close()


class KeepRows(Accumulator):
    """A test accumulator that keeps every row it is given: the rows the statistics rest on."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("kept", BottomK(10**6))

    def accumulate(self, batch: Batch) -> None:
        if batch.accepted:
            rows = batch.rows.reshape(-1, batch.features).double().clone()
            keys = torch.arange(batch.n, dtype=torch.float64) + (0 if self.kept is None else len(self.kept[0]))
            self.kept = self.states.kinds["kept"].merge(self.kept, (keys, rows))

    @property
    def rows(self) -> list[torch.Tensor]:
        return [] if self.kept is None else [self.kept[1]]


def _rank(rank: int, folder: str) -> None:
    from delve.statistics.registry import STATISTICS, Statistic, register_statistic

    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        if "keep" not in STATISTICS:
            keep = Statistic("keep", "kept-rows", lambda s: len(s.accumulators["keep"].rows), accumulator=KeepRows)
            register_statistic(keep)
        torch.manual_seed(0)
        layer = nn.Linear(10, 40).double()
        tracker = SaturationTracker(
            "d", modules=layer, nosave=True, stats=["cov", "keep"], max_overhead=0.02, precision="float64"
        )
        generator = torch.Generator().manual_seed(10 + rank)
        with torch.no_grad():
            for _ in range(5):
                layer(torch.randn(250, 10, generator=generator, dtype=torch.float64) + rank)
        kept = torch.cat(tracker._recording.recorders["linear"].modes["train"].accumulators["keep"].rows)
        values = tracker.add_saturations()
        result = {"kept": kept.tolist(), "cov": values["train-covariance-matrix_linear"].tolist()}
        result["rows"] = values["train-rows_linear"]
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_ranks_merge_exactly_what_each_sampled(tmp_path) -> None:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    context = mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=False)
    deadline = time.monotonic() + 150
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the two ranks did not finish (deadlock?)"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    kept = np.concatenate([np.asarray(r["kept"]) for r in results])
    assert 0 < kept.shape[0] < 2 * 5 * 250  # each rank sampled
    assert not np.array_equal(results[0]["kept"], results[1]["kept"])  # independent streams and data
    for result in results:
        assert result["rows"] == kept.shape[0]
        assert rel_fro(result["cov"], np_cov(kept)) < 1e-12


def test_rows_are_logged_and_too_few_are_warned_about_once() -> None:
    layer = nn.Linear(8, 96)
    tracker = SaturationTracker("f", modules=layer, nosave=True, stats=["lsat"], max_overhead=0.01)
    with torch.no_grad():
        layer(torch.randn(3000, 8))  # 20 rows per feature are there, the budget keeps fewer
    # A widening affine layer spans at most its input's 8 directions: its rows are counted against those.
    said = r"'linear' \(train\) merged \d+ rows for the 8 directions its 96 outputs can span.*20 per direction"
    with pytest.warns(RuntimeWarning, match=said + r".*max_overhead="):
        values = tracker.add_saturations()
    assert 0 < values["train-rows_linear"] < 20 * 8
    assert set(tracker.run_record.statistics) >= {"saturation", "rows"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with torch.no_grad():
            layer(torch.randn(3000, 8))
        tracker.add_saturations()  # once per layer and mode
    tracker.close()


def test_max_overhead_is_validated() -> None:
    for bad in (0, -0.1, "5%", float("inf"), True):
        with pytest.raises(ValueError, match=r"max_overhead must be a number > 0"):
            SaturationTracker("v", modules=nn.Linear(2, 2), nosave=True, max_overhead=bad)


def test_auto_precision_under_a_budget_multiplies_in_float32_and_an_explicit_choice_is_kept() -> None:
    for precision, expected in (("auto", "float32"), ("float64", "float64")):
        model = nn.Sequential(nn.Linear(8, 32))
        tracker = SaturationTracker("p", modules=model, nosave=True, max_overhead=0.05, precision=precision)
        with torch.no_grad():
            model(torch.randn(64, 8))
        assert tracker._recording.recorders["0"].modes["train"].covariance.precision == expected
        tracker.close()


def _digits_mlp_run(max_overhead: float | None) -> dict:
    """The issue's case: an MLP 64-256-256-10 on digits, 22 training batches of 64 and one evaluation batch of 397."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32)
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    tracker = SaturationTracker("d", modules=model, nosave=True, max_overhead=max_overhead, precision="float64")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for start in range(0, 22 * 64, 64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model(x[-397:])
    kept = {layer: tracker._recording.settings.costs.rows_to_keep(layer, 64) for layer in ("0", "2", "4")}
    values = tracker.add_saturations()
    tracker.close()
    return {"values": values, "kept": kept}


def test_a_budget_keeps_every_row_of_cheap_layers_and_of_a_short_evaluation() -> None:
    exact = _digits_mlp_run(None)["values"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the 256-wide layers have fewer than 20 rows per feature
        budgeted = _digits_mlp_run(0.05)
    # The 10-wide head costs next to nothing: it keeps all 64 rows of every batch, and its values are exact.
    assert budgeted["kept"]["4"] == 64
    assert budgeted["values"]["train-rows_4"] == 22 * 64
    assert budgeted["values"]["train-saturation_4"] == exact["train-saturation_4"]
    # The evaluation pass (397 rows, fewer than 20 per feature of a 256-wide layer) is kept whole.
    for layer in ("0", "2", "4"):
        assert budgeted["values"][f"eval-rows_{layer}"] == 397
        assert budgeted["values"][f"eval-saturation_{layer}"] == exact[f"eval-saturation_{layer}"], layer
    # The wide layers do sample their training rows, and report how many they kept.
    assert budgeted["kept"]["2"] < 64


def test_fewer_rows_than_features_are_missing_values_with_the_rows_beside_them() -> None:
    layer = nn.Linear(4, 32)
    with SaturationTracker("f", modules=layer, nosave=True, stats=["lsat", "idim", "trc"]) as tracker:
        with torch.no_grad():
            layer(torch.randn(20, 4))  # 20 rows for 32 features
        values = tracker.add_saturations()
    assert math.isnan(values["train-saturation_linear"]) and math.isnan(values["train-intrinsic-dimensionality_linear"])
    assert values["train-rows_linear"] == 20
    assert values["train-covariance-trace_linear"] > 0  # a trace needs no more rows than it has


def test_a_max_overhead_above_one_names_the_fraction_probably_meant() -> None:
    with pytest.raises(ValueError, match=r"0\.05 means 5 %.*did you mean max_overhead=0\.05\?"):
        SaturationTracker("v", modules=nn.Linear(2, 2), nosave=True, max_overhead=5)


def test_on_the_input_route_a_budget_keeps_whole_batches_one_in_m() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 256).double()
    tracker = SaturationTracker("w", modules=layer, nosave=True, stats=["cov"], max_overhead=0.05)
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(1024, 16, generator=generator, dtype=torch.float64) for _ in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # few rows per feature: warned about, expected
        with torch.no_grad():
            for batch in batches:
                layer(batch)
        costs = tracker._recording.settings.costs
        (cost,) = costs.costs
        share, period = costs.rows_to_keep("linear", 1024), costs.period("linear")
        values = tracker.add_saturations()
    tracker.close()
    assert cost.route == "input" and period == min(round(1 / costs.rate("linear")), MAX_BATCHES_PER_WHOLE_DRAW) > 1
    # The input route pays a map per batch: sampled, a row costs its share of a whole batch.
    assert cost.sampled_work_per_row == pytest.approx(cost.work / 1024)
    # The first batch keeps its share; every other batch is kept whole or not at all.
    drawn, left = divmod(values["train-rows_linear"] - share, 1024)
    assert left == 0 and 0 < drawn < 39
    mean, sigma = 39 / period, math.sqrt(39 / period * (1 - 1 / period))
    assert abs(drawn - mean) <= 5 * sigma

