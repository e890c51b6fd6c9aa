"""Accuracy of the optimised covariance update against numpy, in both precisions.

The reference is the two-pass covariance computed by numpy in extended
precision (``np.longdouble``) on the very values delve saw (float32 or bfloat16
inputs are converted exactly), so the bounds below measure delve alone.

Measured on the cases of this file (x86-64, torch 2.13, relative Frobenius
error): exact mode stays below 1e-13 for offsets |mean| / std up to 1e3, and
the error grows about linearly with that ratio (3e-12 at 1e5, 3e-11 at 1e6:
batch means carry a rounding error proportional to |mean| into the pairwise
update). The fast mode (``precision="float32"``) stays between 1e-8 and
6.4e-7 for every offset from 0 to 1e6, bfloat16 inputs included; the bound
below leaves a factor of three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import delve.engine.products as kernels
from delve import SaturationTracker, TorchCovarianceMatrix
from delve.capture.layer_kinds import observe_conv
from delve.capture.observation import ObservationConfig

EXACT_BOUND = 1e-12
FAST_BOUND = 2e-6


def reference_cov(rows: np.ndarray) -> np.ndarray:
    """Population covariance, two-pass, in extended precision."""
    rows = np.asarray(rows, dtype=np.longdouble)
    centred = rows - rows.mean(axis=0)
    return centred.T @ centred / rows.shape[0]


def rel_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    diff = np.asarray(actual.numpy(), dtype=np.longdouble) - expected
    return float(np.linalg.norm(diff.astype(np.float64)) / np.linalg.norm(expected.astype(np.float64)))


def as_rows(batch: torch.Tensor) -> np.ndarray:
    """The observations of a ``(..., d)`` batch as float64 numpy rows (exact for float32/bf16)."""
    return batch.detach().to(torch.float64).reshape(-1, batch.shape[-1]).numpy()


def linear_batches(d: int, sizes: list[int], offset: float, dtype=torch.float32) -> list[torch.Tensor]:
    """Correlated features around a common offset, as a linear layer would emit."""
    generator = torch.Generator().manual_seed(d)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64) / d**0.5
    scales = torch.logspace(0, -3, d, dtype=torch.float64)
    return [
        ((torch.randn(n, d, generator=generator, dtype=torch.float64) * scales) @ mixing + offset).to(dtype)
        for n in sizes
    ]


def conv_batches(channels: int, side: int, count: int, offset: float) -> list[torch.Tensor]:
    """The channelwise ``(N, H*W, C)`` views of NCHW conv outputs (strided, not copied)."""
    generator = torch.Generator().manual_seed(channels)
    maps = [torch.randn(8, channels, side, side, generator=generator) + offset for _ in range(count)]
    conv = nn.Conv2d(3, channels, 3)
    return [observe_conv(conv, out, ObservationConfig()) for out in maps]


def feed(acc: TorchCovarianceMatrix, batches: list[torch.Tensor]) -> TorchCovarianceMatrix:
    for batch in batches:
        acc.update_rows(batch)
    return acc


@pytest.fixture
def sync_free(monkeypatch):
    """Runs the accelerator code path (no host synchronisation) on a CPU."""
    monkeypatch.setattr(kernels, "decides_on_device", lambda device: True)


CASES = {
    # name: batches factory(offset); d below 128, in 4 blocks, in 8 blocks, conv views
    "linear-d7": lambda offset: linear_batches(7, [50, 1, 300, 64], offset),
    "linear-d130": lambda offset: linear_batches(130, [40, 257, 90], offset),
    "linear-d520": lambda offset: linear_batches(520, [256, 256, 100], offset),
    "conv-c24": lambda offset: conv_batches(24, 16, 3, offset),
    "conv-c200": lambda offset: conv_batches(200, 6, 3, offset),
}


@pytest.mark.parametrize("offset", [0.0, 1e3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_mode_matches_numpy(case, offset):
    batches = CASES[case](offset)
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    acc = feed(TorchCovarianceMatrix(), batches)
    assert acc.count == sum(as_rows(b).shape[0] for b in batches)
    assert rel_error(acc.fix(), expected) <= EXACT_BOUND


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e6])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_mode_error_is_bounded_whatever_the_offset(case, offset):
    batches = CASES[case](offset)
    rows = np.concatenate([as_rows(b) for b in batches])
    expected = reference_cov(rows)
    acc = feed(TorchCovarianceMatrix(precision="float32"), batches)
    fixed = acc.fix()
    assert fixed.dtype == torch.float64
    assert rel_error(fixed, expected) <= FAST_BOUND
    # The running mean stays float64 and is not eaten by the offset either.
    spread = rows.std(axis=0).min()
    assert np.abs(acc.mean.numpy() - rows.mean(axis=0)).max() <= 1e-6 * spread


def test_fast_mode_accepts_half_precision_outputs():
    """bf16 outputs (autocast) are converted exactly before the float32 product."""
    batches = [b.to(torch.bfloat16) for b in linear_batches(96, [128, 128, 64], 3.0)]
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    for precision, bound in (("float64", EXACT_BOUND), ("float32", FAST_BOUND)):
        acc = feed(TorchCovarianceMatrix(precision=precision), batches)
        assert rel_error(acc.fix(), expected) <= bound


@pytest.mark.parametrize("precision, bound", [("float64", EXACT_BOUND), ("float32", FAST_BOUND)])
def test_batches_merged_in_slices_match_numpy(monkeypatch, precision, bound):
    """Large batches are merged slice by slice; forcing tiny slices must not change the result."""
    monkeypatch.setattr(kernels, "SLICE_BYTES", 2048)
    batches = conv_batches(16, 8, 2, 10.0) + linear_batches(16, [200, 3], 10.0)
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    acc = feed(TorchCovarianceMatrix(precision=precision), batches)
    assert acc.count == sum(as_rows(b).shape[0] for b in batches)
    assert rel_error(acc.fix(), expected) <= bound


@pytest.mark.parametrize("precision, bound", [("float64", EXACT_BOUND), ("float32", FAST_BOUND)])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_sliced_batch_with_one_nan_is_left_out_whole(monkeypatch, precision, bound, poison):
    """Earlier slices of a poisoned batch are undone: state, count and mean as before it."""
    monkeypatch.setattr(kernels, "SLICE_BYTES", 2048)
    good, bad = conv_batches(16, 8, 2, 0.0)
    bad = bad.clone()
    bad[7, 63, 15] = poison  # in the last slice
    acc = feed(TorchCovarianceMatrix(precision=precision), [good, bad])
    rows = as_rows(good)
    assert acc.count == rows.shape[0]
    assert acc.rejected_batches == 1
    assert rel_error(acc.fix(), reference_cov(rows)) <= bound
    mean_bound = 1e-12 if precision == "float64" else 1e-6 * rows.std(axis=0).min()
    np.testing.assert_allclose(acc.mean.numpy(), rows.mean(axis=0), rtol=0, atol=mean_bound)


def test_a_sliced_wide_batch_with_one_nan_is_left_out_whole(monkeypatch):
    """Fewer rows than features: the batch is checked before any slice is merged."""
    monkeypatch.setattr(kernels, "SLICE_BYTES", 2048)
    good, bad = linear_batches(520, [300, 300], 1.0)
    bad[299, 5] = float("nan")
    acc = feed(TorchCovarianceMatrix(), [good, bad])
    assert (acc.count, acc.rejected_batches) == (300, 1)
    assert rel_error(acc.fix(), reference_cov(as_rows(good))) <= EXACT_BOUND


def test_fast_mode_multiplies_few_rows_per_feature_in_float64():
    """A product of fewer than d / 8 rows is float64 (cheaper there), so the
    fast mode is exact for it; from d / 8 rows on float32 rounding shows.
    (Small batches wait to be multiplied together: what counts is the rows
    of one product, here one batch of 32 rows, or 63 + 300.)"""
    for sizes, exact in (([32], True), ([63, 300], False)):
        batches = linear_batches(512, sizes, 1.0)
        expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
        error = rel_error(feed(TorchCovarianceMatrix(precision="float32"), batches).fix(), expected)
        assert (error <= EXACT_BOUND) == exact, (sizes, error)
        assert error <= FAST_BOUND


@pytest.mark.parametrize("jump", [1e2, 1e4])
def test_fast_mode_batch_far_from_the_running_mean_is_centred_on_its_own(jump):
    """One row, then batches far from it: their float32 product around the
    running mean (that row) would lose about eps32 * n_b relative (measured
    3e-4 with the check disabled); centring each on its own mean keeps 5e-8."""
    first, *rest = conv_batches(24, 16, 3, 0.0)
    batches = [first[:1, :1]] + [batch + jump for batch in rest]
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    acc = feed(TorchCovarianceMatrix(precision="float32"), batches)
    assert rel_error(acc.fix(), expected) <= FAST_BOUND


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_constant_channel_has_exactly_zero_covariance(precision):
    """A channel stuck at one non-zero value (zero variance) in conv-shaped batches."""
    batches = [b.clone() for b in conv_batches(24, 16, 3, 0.5)]
    for batch in batches:
        batch[..., 3] = 7.25
    fixed = feed(TorchCovarianceMatrix(precision=precision), batches).fix()
    assert torch.count_nonzero(fixed[3]) == 0 and torch.count_nonzero(fixed[:, 3]) == 0
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    assert rel_error(fixed, expected) <= (EXACT_BOUND if precision == "float64" else FAST_BOUND)


@pytest.mark.parametrize("precision, bound", [("float64", EXACT_BOUND), ("float32", FAST_BOUND)])
def test_sync_free_accelerator_path_matches_numpy(sync_free, precision, bound):
    """The update used on GPUs (decisions kept on the device) gives the same covariance."""
    batches = CASES["conv-c24"](5.0) + linear_batches(24, [100, 7], 5.0)
    poisoned = batches[1].clone()
    poisoned[0, 0, 0] = float("inf")
    expected = reference_cov(np.concatenate([as_rows(b) for b in batches]))
    acc = feed(TorchCovarianceMatrix(precision=precision), [batches[0], poisoned, *batches[1:]])
    assert acc.count == sum(as_rows(b).shape[0] for b in batches)
    assert acc.rejected_batches == 1
    assert rel_error(acc.fix(), expected) <= bound


def test_fast_mode_through_the_tracker_matches_numpy():
    """End to end: hooks, observers and the float32 product against numpy on the captured outputs."""
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 64, 20))
    captured: dict[str, list[torch.Tensor]] = {"0": [], "3": []}
    handles = [
        model[0].register_forward_hook(lambda m, i, o: captured["0"].append(o.detach().clone())),
        model[3].register_forward_hook(lambda m, i, o: captured["3"].append(o.detach().clone())),
    ]
    with SaturationTracker("run", modules=model, nosave=True, stats=["cov"], precision="float32") as tracker:
        for _ in range(3):
            model(torch.randn(16, 3, 8, 8) + 4.0)
        values = tracker.add_saturations()
    for handle in handles:
        handle.remove()
    conv_rows = np.concatenate([o.permute(0, 2, 3, 1).reshape(-1, 12).double().numpy() for o in captured["0"]])
    linear_rows = np.concatenate([o.double().numpy() for o in captured["3"]])
    for name, rows in (("0", conv_rows), ("3", linear_rows)):
        expected = reference_cov(rows)
        cov = torch.from_numpy(values[f"train-covariance-matrix_{name}"])
        assert rel_error(cov, expected) <= FAST_BOUND


def test_max_positions_records_a_strided_lattice_of_positions():
    """The recorded rows are every k-th position from some start: equal to numpy on that subset."""
    out = torch.randn(4, 6, 8, 8) + 2.0
    conv = nn.Conv2d(3, 6, 3)
    rows = observe_conv(conv, out, ObservationConfig(max_positions=16))
    assert rows.shape == (4, 16, 6)
    acc = feed(TorchCovarianceMatrix(), [rows])
    maps = out.flatten(2)
    candidates = [reference_cov(as_rows(maps[:, :, start::4].transpose(1, 2))) for start in range(4)]
    assert min(rel_error(acc.fix(), c) for c in candidates) <= EXACT_BOUND


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_max_positions_is_validated(bad):
    with pytest.raises(ValueError, match="max_positions"):
        SaturationTracker("run", modules=nn.Conv2d(3, 4, 3), nosave=True, max_positions=bad)


def test_one_large_feature_map_is_sliced_along_its_positions(monkeypatch):
    """A batch of one image larger than a slice is split along its positions, still exactly."""
    monkeypatch.setattr(kernels, "SLICE_BYTES", 4096)
    (rows,) = conv_batches(8, 20, 1, 3.0)
    single = rows[:1]  # (1, 400, 8): one image, 25 kB in float64
    acc = feed(TorchCovarianceMatrix(), [single])
    assert acc.count == 400
    assert rel_error(acc.fix(), reference_cov(as_rows(single))) <= EXACT_BOUND


@pytest.mark.parametrize("precision, bound", [("float64", EXACT_BOUND), ("float32", FAST_BOUND)])
def test_small_batches_merged_in_blocks_match_numpy(precision, bound):
    """Batches of a few rows wait in a block of about d rows; read at any point, nothing is missing."""
    batches = linear_batches(96, [3, 1, 17, 40, 2, 64, 5, 33, 8], 7.0)
    acc = TorchCovarianceMatrix(precision=precision)
    seen = []
    for batch in batches:
        acc.update_rows(batch)
        seen.append(batch)
        if len(seen) in (4, 7):  # a read in the middle flushes what waits
            rows = np.concatenate([as_rows(b) for b in seen])
            assert acc.count == rows.shape[0]
            assert rel_error(acc.fix(), reference_cov(rows)) <= bound
    rows = np.concatenate([as_rows(b) for b in batches])
    assert acc.count == rows.shape[0]
    assert rel_error(acc.fix(), reference_cov(rows)) <= bound
