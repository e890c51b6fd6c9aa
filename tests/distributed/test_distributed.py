"""torch.distributed: two gloo processes give exactly the statistics of one process on all the data."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from delve import SaturationTracker, TorchCovarianceMatrix
from delve.engine.activity import MeanAbsoluteActivity
from delve.engine.sync import merge_across_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

WORLD = 2
STATS = ["lsat", "idim", "cov", "trc", "dtrc", "det", "dorm", "erank", "pr", "probe"]
TIMEOUT_S = 150


class Net(nn.Module):
    """``rare`` runs only on the batches that ask for it (on rank 0 only, below)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 4)
        self.rare = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, rare: bool = False) -> torch.Tensor:
        hidden = torch.tanh(self.a(x))
        return self.rare(hidden) if rare else self.b(hidden)


def make_net() -> nn.Module:
    torch.manual_seed(5)
    return Net().double()


def shards(epoch: int) -> list[list[tuple[torch.Tensor, str, bool]]]:
    """Per rank, the (batch, mode, rare) steps of one epoch; uneven sizes, a large common offset."""
    generator = torch.Generator().manual_seed(100 + epoch)
    work: list[list[tuple[torch.Tensor, str, bool]]] = [[] for _ in range(WORLD)]
    for step in range(9):
        rank = step % WORLD
        n = int(torch.randint(3, 30, (1,), generator=generator))
        batch = torch.randn(n, 6, generator=generator, dtype=torch.float64) * (1 + step) + 300.0
        work[rank].append((batch, "train", False))
    for _ in range(3):  # eval runs on rank 1 only, the rare layer on rank 0 only
        work[1].append((torch.randn(7, 6, generator=generator, dtype=torch.float64), "eval", False))
        work[0].append((torch.randn(5, 6, generator=generator, dtype=torch.float64) - 2.0, "train", True))
    return work


def feed(net: nn.Module, steps, tracker: SaturationTracker | None = None) -> None:
    with torch.no_grad():
        for batch, mode, rare in steps:
            if tracker is not None and tracker.probes:
                tracker.set_targets((batch[:, 0] > batch[:, 0].mean()).long())  # the probes' classes
            net.train(mode == "train")
            net(batch, rare=rare)


def jsonable(values: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in values.items()}


def _forbid_gathers() -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("delve must not gather per-rank matrices")

    for name in ("all_gather", "all_gather_into_tensor", "all_gather_object", "gather", "broadcast_object_list"):
        setattr(dist, name, refuse)


def worker(rank: int, folder: str) -> None:
    run_rank(rank, folder)
    # The results are written. Leave without running destructors: PyTorch 2.1
    # can deadlock freeing the DistributedDataParallel model's gloo group
    # (its destructor joins a thread that waits for the GIL it holds).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_rank(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        _forbid_gathers()
        out: dict = {}
        # 1. plain process group, layers seen on some ranks only, two epochs.
        net = make_net()
        tracker = SaturationTracker(os.path.join(folder, f"rank{rank}", "run"), modules=net, stats=STATS, write_rank=0)
        out["epochs"] = []
        for epoch in range(2):
            feed(net, shards(epoch)[rank], tracker)
            if rank == 1 and epoch == 1:
                net.train()
                tracker.set_targets(torch.zeros(2, dtype=torch.long))
                with torch.no_grad():
                    net(torch.full((2, 6), float("nan"), dtype=torch.float64))
            out["epochs"].append(jsonable(tracker.add_saturations()))
        tracker.close()

        # 2. reset_covariance=False: merged twice, counted once.
        net = make_net()
        tracker = SaturationTracker("x", modules=net, stats=["cov"], nosave=True, reset_covariance=False)
        feed(net, shards(0)[rank])
        tracker.add_saturations()
        feed(net, shards(1)[rank])
        out["cumulative"] = jsonable(tracker.add_saturations())
        tracker.close()

        # 3. the model wrapped in DistributedDataParallel, trained one step.
        torch.manual_seed(9)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
        ddp = nn.parallel.DistributedDataParallel(model)
        tracker = SaturationTracker("y", modules=ddp, stats=["cov"], nosave=True)
        out["ddp_names"] = tracker.layer_names
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        generator = torch.Generator().manual_seed(rank)
        x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        ddp(x).pow(2).mean().backward()
        optimizer.step()
        out["ddp_input"] = x.tolist()
        out["ddp_values"] = jsonable(tracker.add_saturations())
        out["ddp_weights"] = {k: v.tolist() for k, v in model.state_dict().items()}
        tracker.close()

        # 4b. a widening layer on the input route, uneven rows per rank.
        torch.manual_seed(13)
        wide = nn.Linear(6, 48).double()
        tracker = SaturationTracker("z", modules=wide, stats=["cov"], nosave=True)
        with torch.no_grad():
            for batch in wide_batches(rank):
                wide(batch)
        out["wide_route"] = tracker.cost()["route"].tolist()
        out["wide"] = tracker.add_saturations()["train-covariance-matrix_linear"].tolist()
        tracker.close()

        # 4. an extra accumulator (mean |x| for `dorm`), one rank without rows.
        activity = MeanAbsoluteActivity()
        activity.update(activity_rows(rank))
        out["activity"] = merge_across_ranks([activity])[0].mean_abs().tolist()
        out["activity_local"] = activity.mean_abs().tolist()
        empty_on_rank_1 = MeanAbsoluteActivity()
        if rank == 0:
            empty_on_rank_1.update(activity_rows(rank))
        out["activity_one_rank"] = merge_across_ranks([empty_on_rank_1])[0].mean_abs().tolist()
        Path(folder, f"result{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def wide_batches(rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(60 + rank)
    return [torch.randn(200 + 90 * rank, 6, generator=generator, dtype=torch.float64) * 2 + rank for _ in range(2)]


def activity_rows(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(40 + rank)
    return torch.randn(5 + 3 * rank, 4, generator=generator, dtype=torch.float64) * (1 + 10 * rank)


def run_workers(folder: Path) -> list[dict]:
    context = mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT_S} s (deadlock?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((folder / f"result{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return run_workers(tmp_path_factory.mktemp("ddp"))


def single_process(epochs=(0, 1), **kwargs) -> list[dict]:
    net = make_net()
    tracker = SaturationTracker("single", modules=net, stats=STATS, nosave=True, **kwargs)
    values = []
    for epoch in epochs:
        for steps in shards(epoch):
            feed(net, steps, tracker)
        values.append(tracker.add_saturations())
    tracker.close()
    return values


def assert_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        # The evaluation batches lie far from the training ones (an offset of 300): a probe fitted on
        # these extrapolates to an R^2 of -1e11, which turns rounding of its weights into 1e-7 relative.
        rtol = 1e-6 if "probe" in key else 1e-12
        np.testing.assert_allclose(np.asarray(actual[key]), value, rtol=rtol, atol=1e-12, err_msg=key)


def test_two_ranks_equal_one_process_on_all_the_data(results, ref) -> None:
    expected = single_process()
    for rank_result in results:
        assert_close(rank_result["epochs"][0], expected[0])
        # Epoch 1 adds a NaN batch on rank 1: counted once, over both ranks.
        epoch1 = dict(rank_result["epochs"][1])
        assert epoch1.pop("train-nonfinite-batches_a") == 1
        assert epoch1.pop("train-nonfinite-batches_b") == 1
        assert_close(epoch1, expected[1])
    # The layer that ran on rank 0 only and the eval mode that ran on rank 1 only are there.
    assert {"train-saturation_rare", "eval-saturation_a"} <= set(results[0]["epochs"][0])
    # And against numpy on the outputs of the first layer, all ranks' rows together.
    net = make_net()
    with torch.no_grad():
        rows = [net.a(batch) for steps in shards(0) for batch, mode, _ in steps if mode == "train"]
    np.testing.assert_allclose(
        results[1]["epochs"][0]["train-covariance-matrix_a"], ref.cov(torch.cat(rows).numpy()), rtol=1e-10
    )


def test_every_rank_returns_the_same_values(results) -> None:
    assert results[0]["epochs"] == results[1]["epochs"]
    assert results[0]["cumulative"] == results[1]["cumulative"]
    assert results[0]["ddp_values"] == results[1]["ddp_values"]


def test_only_rank_zero_writes(results, tmp_path_factory) -> None:
    import pandas as pd

    folder = next(p for p in tmp_path_factory.getbasetemp().iterdir() if p.name.startswith("ddp"))
    assert not (folder / "rank1").exists() or not any((folder / "rank1").iterdir())
    frame = pd.read_csv(folder / "rank0" / "run.csv", sep=";", index_col=0)
    assert frame.index.tolist() == [0, 1]
    assert frame.loc[0, "train-saturation_rare"] == results[1]["epochs"][0]["train-saturation_rare"]


def test_without_reset_the_running_state_is_merged_once(results) -> None:
    net = make_net()
    tracker = SaturationTracker("single", modules=net, stats=["cov"], nosave=True)
    for epoch in (0, 1):
        for steps in shards(epoch):
            feed(net, steps)
    assert_close(results[0]["cumulative"], tracker.add_saturations())


def test_ddp_wrapped_model_keeps_the_users_names(results, ref) -> None:
    for rank_result in results:
        assert rank_result["ddp_names"] == ["0", "2"]
        assert not any(name.startswith("module") for name in rank_result["ddp_values"])
    # Both ranks ended with the same weights (DDP averaged the gradients) and the
    # recorded rows are the first layer's outputs on both ranks' inputs.
    assert results[0]["ddp_weights"] == results[1]["ddp_weights"]
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    inputs = torch.cat([torch.tensor(r["ddp_input"], dtype=torch.float64) for r in results])
    with torch.no_grad():
        expected = ref.cov(model[0](inputs).numpy())
    np.testing.assert_allclose(results[0]["ddp_values"]["train-covariance-matrix_0"], expected, rtol=1e-12, atol=1e-14)


def test_merge_is_a_no_op_in_one_process(tmp_path) -> None:
    accumulator = TorchCovarianceMatrix()
    accumulator.update(torch.randn(10, 3))
    assert merge_across_ranks([accumulator, None]) == [accumulator, None]
    # Also with an initialised group of one rank.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        merged = merge_across_ranks([accumulator, None])
        assert merged[0] is accumulator and merged[1] is None
        net = make_net()
        tracker = SaturationTracker(str(tmp_path / "run"), modules=net, nosave=True, stats=["cov"])
        feed(net, shards(0)[0])
        assert tracker.add_saturations()
        tracker.close()
    finally:
        dist.destroy_process_group()


def test_extra_accumulators_merge_across_ranks(results) -> None:
    both = torch.cat([activity_rows(rank) for rank in range(WORLD)]).numpy()
    rank0, rank1 = (np.abs(activity_rows(rank).numpy()).mean(axis=0) for rank in range(WORLD))
    for result in results:
        np.testing.assert_allclose(result["activity"], np.abs(both).mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(result["activity_one_rank"], rank0, rtol=1e-12)
    # the local accumulators are left as they were
    np.testing.assert_allclose(results[1]["activity_local"], rank1, rtol=1e-12)


def test_the_input_route_merges_across_ranks_exactly(results, ref) -> None:
    torch.manual_seed(13)
    wide = nn.Linear(6, 48).double()
    with torch.no_grad():
        rows = torch.cat([wide(batch) for rank in range(WORLD) for batch in wide_batches(rank)]).numpy()
    for rank_result in results:
        assert rank_result["wide_route"] == ["input"]
        np.testing.assert_allclose(rank_result["wide"], ref.cov(rows), rtol=1e-11, atol=1e-13)
