"""SaturationTracker on small real training loops, checked against numpy on independently captured rows.

Every test captures each tracked layer's output with its own forward hook and turns
it into observation rows with plain torch/numpy reshapes. The statistics the tracker
returns must equal numpy's on the concatenation of all rows since the last reset.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import np_cov, reference_stats
from torch import nn

from delve import CheckLayerSat, SaturationTracker

SCALAR_STATS = ("lsat", "idim", "trc", "dtrc", "det")
STAT_NAMES = {
    "lsat": "saturation",
    "idim": "intrinsic-dimensionality",
    "trc": "covariance-trace",
    "dtrc": "diagonal-trace",
    "det": "covariance-log-determinant",
    "cov": "covariance-matrix",
}


# ------------------------------------------------------------- references
def reference_rows(module: nn.Module, output) -> np.ndarray:
    """Default-configuration observation rows, written independently of delve."""
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        sequence = output[0].detach()
        last = sequence[:, -1] if module.batch_first else sequence[-1]
        return last.double().numpy()
    if isinstance(module, nn.MultiheadAttention):
        attended = output[0].detach()
        return attended.reshape(-1, attended.shape[-1]).double().numpy()
    out = output.detach().double().numpy()
    if isinstance(
        module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    ):
        return np.moveaxis(out, 1, -1).reshape(-1, out.shape[1])  # every position is a sample
    return out.reshape(-1, out.shape[-1])


class Capture:
    """Collect every forward pass of the named modules, per mode, with our own hooks."""

    def __init__(self, modules: dict[str, nn.Module], rows: Callable = reference_rows) -> None:
        self.batches: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name, rows)))

    def _hook(self, name: str, rows: Callable):
        def hook(module, inputs, output):
            mode = "train" if module.training else "eval"
            self.batches[(name, mode)].append(rows(module, output))

        return hook

    def rows(self, name: str, mode: str) -> np.ndarray:
        return np.concatenate(self.batches[(name, mode)])

    def clear(self) -> None:
        self.batches.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def assert_values_match(values: dict, expected_rows: dict[tuple[str, str], np.ndarray], stats, threshold=0.99):
    """Every statistic of every layer and mode equals numpy's on the rows."""
    expected_keys = set()
    for (layer, mode), rows in expected_rows.items():
        reference = reference_stats(rows, threshold)
        for key in stats:
            name = f"{mode}-{STAT_NAMES[key]}_{layer}"
            expected_keys.add(name)
            got = values[name]
            if key in ("lsat", "idim"):
                assert got == reference[STAT_NAMES[key]], name
            elif key == "cov":
                scale = np.abs(reference["cov"]).max()
                np.testing.assert_allclose(got, reference["cov"], rtol=1e-9, atol=1e-12 * scale, err_msg=name)
            elif key == "det":
                # The test models are built so that no tracked covariance is near-singular.
                assert np.linalg.cond(reference["cov"]) < 1e10, name
                assert got == pytest.approx(reference[STAT_NAMES[key]], rel=1e-8, abs=1e-8), name
            else:
                assert got == pytest.approx(reference[STAT_NAMES[key]], rel=1e-10), name
    assert set(values) == expected_keys


# ----------------------------------------------------------------- models
class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class GRUNet(nn.Module):
    """Sequence-first GRU: the tracker must take the last step along dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(0, 1))
        return self.head(out[-1])


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        attended, _ = self.attention(h, h, h)
        return self.head(attended.mean(1))


def mlp():
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


def deconv():
    return nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2), nn.ReLU(), nn.ConvTranspose2d(4, 2, 2))


# name -> (model factory, input of n samples, tracked layer name -> submodule path)
CASES = {
    "linear": (mlp, lambda n: torch.randn(n, 12), {"0": "0", "2": "2", "4": "4"}),
    "conv2d": (cnn, lambda n: torch.randn(n, 2, 7, 7), {"0": "0", "2": "2", "6": "6"}),
    "convtranspose2d": (deconv, lambda n: torch.randn(n, 3, 3, 3), {"0": "0", "2": "2"}),
    "lstm": (LSTMNet, lambda n: torch.randn(n, 5, 3), {"rnn": "rnn", "head": "head"}),
    "gru": (GRUNet, lambda n: torch.randn(n, 5, 3), {"rnn": "rnn", "head": "head"}),
    "attention": (
        AttentionNet,
        lambda n: torch.randn(n, 6, 8),
        {"embed": "embed", "attention": "attention", "head": "head"},
    ),
}


def submodules(model: nn.Module, paths: dict[str, str]) -> dict[str, nn.Module]:
    return {name: model.get_submodule(path) for name, path in paths.items()}


def train_steps(model: nn.Module, make_input, steps: int, batch: int = 24) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        out = model(make_input(batch))
        loss = out.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def eval_steps(model: nn.Module, make_input, steps: int, batch: int = 16) -> None:
    model.eval()
    with torch.no_grad():
        for _ in range(steps):
            model(make_input(batch))
    model.train()


# ------------------------------------------------------- the training loops
@pytest.mark.parametrize("case", sorted(CASES))
def test_training_loop_statistics_match_numpy(case, tmp_path):
    build, make_input, paths = CASES[case]
    model = build()
    stats = [*SCALAR_STATS, "cov"]
    tracker = SaturationTracker(str(tmp_path / "run"), modules=model, stats=stats, sat_threshold=0.95)
    assert tracker.layer_names == list(paths)
    capture = Capture(submodules(model, paths))

    for _epoch in range(2):
        train_steps(model, make_input, steps=3)
        eval_steps(model, make_input, steps=2)
        expected = {(name, mode): capture.rows(name, mode) for name in paths for mode in ("train", "eval")}
        values = tracker.add_saturations()
        assert_values_match(values, expected, stats, threshold=0.95)
        # The next epoch sees only its own batches.
        capture.clear()
    tracker.close()
    capture.remove()


def test_training_statistics_with_timestepwise_and_conv_methods(tmp_path):
    """Non-default observation methods, checked with their own reference reshapes."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 3)
            self.rnn = nn.GRU(4, 5, batch_first=True)

        def forward(self, x):
            h = torch.relu(self.conv(x))  # (N, 4, L)
            out, _ = self.rnn(h.transpose(1, 2))
            return out

    def rows(module, output):
        if isinstance(module, nn.GRU):
            return output[0].detach().double().numpy().reshape(-1, 5)  # every step a sample
        return output.detach().double().numpy().max(-1)  # max over positions

    model = Mixed()
    capture = Capture({"conv": model.conv, "rnn": model.rnn}, rows)
    with SaturationTracker(
        "x", modules=model, nosave=True, conv_method="max", timeseries_method="timestepwise", stats=SCALAR_STATS
    ) as tracker:
        train_steps(model, lambda n: torch.randn(n, 3, 9), steps=3)
        values = tracker.add_saturations()
    expected = {(name, "train"): capture.rows(name, "train") for name in ("conv", "rnn")}
    assert_values_match(values, expected, SCALAR_STATS)


def test_train_and_eval_are_split_by_module_training():
    model = mlp()
    capture = Capture(submodules(model, {"2": "2"}))
    with SaturationTracker("x", modules=model, layer_filter="2", nosave=True, stats=["trc", "idim"]) as tracker:
        model(torch.randn(30, 12))
        model[2].eval()  # only this layer switches mode
        model(torch.randn(20, 12) * 3)
        model[2].train()
        model(torch.randn(30, 12))
        values = tracker.add_saturations()
    assert len(capture.batches[("2", "train")]) == 2 and len(capture.batches[("2", "eval")]) == 1
    expected = {("2", mode): capture.rows("2", mode) for mode in ("train", "eval")}
    assert_values_match(values, expected, ["trc", "idim"])


# -------------------------------------------------------------- counting
def test_log_interval_counts_forward_passes_per_layer_and_mode():
    model = mlp()
    capture = Capture(submodules(model, {"0": "0", "4": "4"}))
    with SaturationTracker(
        "x", modules=model, layer_filter=["0", "4"], nosave=True, log_interval=3, stats=["trc", "lsat"]
    ) as tracker:
        for step in range(7):
            model.train()
            model(torch.randn(10, 12))
            if step % 2 == 0:  # interleaved eval passes are counted separately
                model.eval()
                model(torch.randn(10, 12))
        values = tracker.add_saturations()
    expected = {}
    for name in ("0", "4"):
        expected[(name, "train")] = np.concatenate([capture.batches[(name, "train")][i] for i in (0, 3, 6)])
        expected[(name, "eval")] = np.concatenate([capture.batches[(name, "eval")][i] for i in (0, 3)])
    assert len(capture.batches[("0", "eval")]) == 4
    assert_values_match(values, expected, ["trc", "lsat"])


@pytest.mark.parametrize("case", ["linear", "conv2d"])
def test_max_samples_counts_rows_and_truncates_exactly(case):
    build, make_input, paths = CASES[case]
    model = build()
    capture = Capture(submodules(model, paths))
    budget = 50 if case == "linear" else 300  # a conv batch of 24 images holds 24 * 25 rows
    with SaturationTracker("x", modules=model, nosave=True, max_samples=budget, stats=["trc", "idim", "cov"]) as t:
        for _epoch in range(2):
            train_steps(model, make_input, steps=3)
            eval_steps(model, make_input, steps=4)
            expected = {}
            for name in paths:
                for mode in ("train", "eval"):
                    rows = capture.rows(name, mode)
                    expected[(name, mode)] = rows[:budget]
            values = t.add_saturations()
            assert_values_match(values, expected, ["trc", "idim", "cov"])
            capture.clear()  # the budget is per epoch


def test_reset_covariance_false_keeps_accumulating():
    model = mlp()
    capture = Capture(submodules(model, {"2": "2"}))
    with SaturationTracker(
        "x", modules=model, layer_filter="2", nosave=True, reset_covariance=False, stats=["trc", "idim", "det"]
    ) as tracker:
        train_steps(model, CASES["linear"][1], steps=2)
        first = tracker.add_saturations()
        assert_values_match(first, {("2", "train"): capture.rows("2", "train")}, ["trc", "idim", "det"])
        train_steps(model, CASES["linear"][1], steps=2)
        second = tracker.add_saturations()
    # Epoch 1 covers the batches of both epochs.
    assert_values_match(second, {("2", "train"): capture.rows("2", "train")}, ["trc", "idim", "det"])
    assert len(capture.batches[("2", "train")]) == 4


def test_reset_covariance_false_with_max_samples_budget_per_epoch():
    model = nn.Sequential(nn.Linear(6, 4))
    capture = Capture({"0": model[0]})
    with SaturationTracker(
        "x", modules=model, nosave=True, reset_covariance=False, max_samples=15, stats=["trc"]
    ) as tracker:
        for _ in range(2):
            for _ in range(2):
                model(torch.randn(10, 6))
            tracker.add_saturations()
        values = tracker.compute_saturations()
    batches = capture.batches[("0", "train")]
    expected = np.concatenate([batches[0], batches[1][:5], batches[2], batches[3][:5]])
    assert values["train-covariance-trace_0"] == pytest.approx(np.trace(np_cov(expected)), rel=1e-10)


def test_stop_and_resume():
    model = nn.Sequential(nn.Linear(5, 3))
    capture = Capture({"0": model[0]})
    with SaturationTracker("x", modules=model, nosave=True, stats=["trc"]) as tracker:
        model(torch.randn(10, 5))
        tracker.stop()
        assert not tracker.is_recording()
        model(torch.randn(10, 5) * 100)  # would dominate the trace if it counted
        tracker.resume()
        assert tracker.is_recording()
        model(torch.randn(10, 5))
        values = tracker.add_saturations()
    batches = capture.batches[("0", "train")]
    expected = np.trace(np_cov(np.concatenate([batches[0], batches[2]])))
    assert values["train-covariance-trace_0"] == pytest.approx(expected, rel=1e-10)
    with pytest.raises(RuntimeError, match="closed"):
        tracker.resume()


# ------------------------------------------------------------- outputs
def test_output_order_is_the_first_forward_order():
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.c = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.c(self.b(x)))

    model = Branches()
    with SaturationTracker("x", modules=model, nosave=True, stats=["lsat", "trc"]) as tracker:
        assert tracker.layer_names == ["a", "b", "c"]  # registration order before any forward
        model.eval()
        model(torch.randn(8, 4))
        model.train()
        model(torch.randn(8, 4))
        values = tracker.add_saturations()
        assert tracker.layer_names == ["b", "c", "a"]
    assert list(values) == [
        f"{mode}-{stat}_{layer}"
        for layer in ("b", "c", "a")
        for mode in ("train", "eval")
        for stat in ("saturation", "covariance-trace")
    ]


def test_layers_without_data_are_skipped(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.left = nn.Linear(3, 2)
            self.right = nn.Linear(3, 2)

        def forward(self, x, use_right=False):
            return self.right(x) if use_right else self.left(x)

    model = TwoHeads()
    with SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat"]) as tracker:
        model(torch.randn(10, 3))
        first = tracker.add_saturations()
        model(torch.randn(10, 3), use_right=True)
        second = tracker.add_saturations()
        with pytest.warns(RuntimeWarning, match="no recorded forward pass of any tracked layer in epoch 2"):
            third = tracker.add_saturations()  # nothing at all this epoch
    assert list(first) == ["train-saturation_left"]
    assert list(second) == ["train-saturation_right"]
    assert third == {}
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col="epoch")
    assert np.isnan(frame.loc[1, "train-saturation_left"])
    assert frame.loc[1, "train-saturation_right"] == second["train-saturation_right"]


@pytest.mark.parametrize("layerwise", [True, False])
def test_average_and_layerwise_saturation(layerwise):
    model = mlp()
    capture = Capture(submodules(model, {"0": "0", "2": "2", "4": "4"}))
    with SaturationTracker(
        "x", modules=model, nosave=True, average_sat=True, layerwise_sat=layerwise, stats=["lsat"]
    ) as tracker:
        train_steps(model, CASES["linear"][1], steps=2)
        eval_steps(model, CASES["linear"][1], steps=1)
        values = tracker.add_saturations()
    for mode in ("train", "eval"):
        per_layer = [reference_stats(capture.rows(name, mode))["saturation"] for name in ("0", "2", "4")]
        assert values[f"{mode}-average-saturation"] == pytest.approx(np.mean(per_layer), rel=1e-12)
        for name, expected in zip(("0", "2", "4"), per_layer):
            key = f"{mode}-saturation_{name}"
            if layerwise:
                assert values[key] == expected
            else:
                assert key not in values
    assert len(values) == (8 if layerwise else 2)


def test_embed_statistic_projects_on_numpy_eigenvectors():
    model = nn.Sequential(nn.Linear(5, 4))
    capture = Capture({"0": model[0]})
    with SaturationTracker("x", modules=model, nosave=True, stats=["embed"], embed_size=500) as tracker:
        for _ in range(3):
            model(torch.randn(20, 5) @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5, 0.1])))
        values = tracker.add_saturations()
    rows = capture.rows("0", "train")
    embedded = values["train-embedded-sample_0"]
    assert embedded.shape == (60, 2)  # fewer rows than embed_size: all of them
    _, vectors = np.linalg.eigh(np_cov(rows))
    projected = (rows - rows.mean(0)) @ vectors[:, ::-1][:, :2]
    for column in range(2):  # eigenvector signs and the sample's row order are arbitrary
        np.testing.assert_allclose(
            np.sort(np.abs(embedded[:, column])), np.sort(np.abs(projected[:, column])), rtol=1e-8, atol=1e-10
        )


def test_embed_sample_is_bounded():
    model = nn.Sequential(nn.Linear(5, 3))
    with SaturationTracker("x", modules=model, nosave=True, stats=["embed", "lsat"], embed_size=7) as tracker:
        for _ in range(4):
            model(torch.randn(10, 5))
        values = tracker.add_saturations()
    assert values["train-embedded-sample_0"].shape == (7, 2)
    with SaturationTracker("x", modules=model, nosave=True, stats=["embed"]) as tracker:
        for _ in range(3):
            model(torch.randn(200, 5))
        values = tracker.add_saturations()
    assert values["train-embedded-sample_0"].shape == (500, 2)  # the default bound


# ------------------------------------------------------------- files
def test_csv_matches_returned_values(tmp_path):
    model = cnn()
    savefile = str(tmp_path / "runs" / "cnn")
    returned = []
    with SaturationTracker(savefile, save_to="csv", modules=model, stats=[*SCALAR_STATS, "cov"]) as tracker:
        for epoch in range(3):
            train_steps(model, CASES["conv2d"][1], steps=2)
            eval_steps(model, CASES["conv2d"][1], steps=1)
            tracker.add_scalar("train-loss", 1.0 / (epoch + 1))
            returned.append(tracker.add_saturations())
    frame = pd.read_csv(savefile + ".csv", sep=";", index_col="epoch")
    assert list(frame.index) == [0, 1, 2]
    scalar_keys = [key for key in returned[0] if not isinstance(returned[0][key], np.ndarray)]
    # Columns in the order values first arrived: the user scalar, then layers in forward order.
    assert list(frame.columns) == ["train-loss", *scalar_keys]
    for epoch, values in enumerate(returned):
        for key in scalar_keys:
            assert frame.loc[epoch, key] == pytest.approx(values[key], rel=1e-15), key
        assert frame.loc[epoch, "train-loss"] == pytest.approx(1.0 / (epoch + 1))
    assert "train-covariance-matrix_0" in returned[0]  # arrays are returned, not put in the CSV


def test_nosave_writes_nothing(tmp_path, monkeypatch):
    model = mlp()
    monkeypatch.chdir(tmp_path)  # a relative savefile lands here if anything is written
    tracker = SaturationTracker("run", save_to="csv", modules=model, nosave=True, stats=["lsat", "cov"])
    train_steps(model, CASES["linear"][1], steps=2)
    tracker.add_scalar("loss", 0.3)
    values = tracker.add_saturations()
    tracker.save()
    tracker.close()
    assert values  # the values are still computed and returned
    assert list(tmp_path.iterdir()) == []


def test_device_argument():
    model = nn.Sequential(nn.Linear(6, 4))
    capture = Capture({"0": model[0]})
    with SaturationTracker("x", modules=model, nosave=True, device="cpu", stats=["trc", "cov"]) as tracker:
        model(torch.randn(20, 6))
        values = tracker.add_saturations()
    assert_values_match(values, {("0", "train"): capture.rows("0", "train")}, ["trc", "cov"])
    with pytest.raises(ValueError, match="device"):
        SaturationTracker("x", modules=model, nosave=True, device="not-a-device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_argument_moves_accumulators_to_the_gpu():
    model = nn.Sequential(nn.Linear(6, 4))
    capture = Capture({"0": model[0]})
    with SaturationTracker("x", modules=model, nosave=True, device="cuda", stats=["trc", "cov", "idim"]) as tracker:
        for _ in range(3):
            model(torch.randn(20, 6))
        values = tracker.add_saturations()
    assert_values_match(values, {("0", "train"): capture.rows("0", "train")}, ["trc", "cov", "idim"])


# ------------------------------------------------------ the user's model
def test_close_removes_every_hook():
    model = AttentionNet()
    tracker = SaturationTracker("x", modules=model, nosave=True)
    assert any(len(m._forward_hooks) for m in model.modules())
    model(torch.randn(2, 6, 8))
    tracker.close()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    tracker.close()  # twice is fine
    assert not tracker.is_recording()


def test_context_manager_closes():
    model = mlp()
    with SaturationTracker("x", modules=model, nosave=True) as tracker:
        assert isinstance(tracker, SaturationTracker)
        assert len(model[0]._forward_hooks) == 1
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_modules_get_no_new_attributes():
    model = LSTMNet()
    before = {name: set(module.__dict__) for name, module in model.named_modules()}
    tracker = SaturationTracker("x", modules=model, nosave=True, stats=["lsat", "embed"])
    train_steps(model, CASES["lstm"][1], steps=2)
    eval_steps(model, CASES["lstm"][1], steps=1)
    tracker.add_saturations()
    during = {name: set(module.__dict__) for name, module in model.named_modules()}
    tracker.close()
    after = {name: set(module.__dict__) for name, module in model.named_modules()}
    assert during == before
    assert after == before


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_tracked_model_stays_copyable_and_copies_are_not_tracked(how):
    model = mlp()
    capture = Capture(submodules(model, {"0": "0"}))
    with SaturationTracker("x", modules=model, layer_filter="0", nosave=True, stats=["trc"]) as tracker:
        model(torch.randn(16, 12))
        capture.remove()  # our own hooks are closures: keep them out of the copy
        clone = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
        out = clone(torch.randn(16, 12) * 50)  # would change the trace if the copy were tracked
        assert out.shape == (16, 3)
        values = tracker.add_saturations()
    expected = np.trace(np_cov(capture.rows("0", "train")))
    assert values["train-covariance-trace_0"] == pytest.approx(expected, rel=1e-10)
    # The copy works on its own after the original's tracker is gone.
    assert clone(torch.randn(2, 12)).shape == (2, 3)


def test_state_dict_round_trip_continues_the_epoch():
    model = mlp()
    capture = Capture(submodules(model, {"2": "2"}))
    first = SaturationTracker("x", modules=model, layer_filter="2", nosave=True, stats=["trc", "idim"])
    model(torch.randn(20, 12))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.close()
    buffer.seek(0)
    second = SaturationTracker("x", modules=model, layer_filter="2", nosave=True, stats=["trc", "idim"])
    second.load_state_dict(torch.load(buffer, weights_only=True))
    model(torch.randn(20, 12))
    values = second.add_saturations()
    second.close()
    assert_values_match(values, {("2", "train"): capture.rows("2", "train")}, ["trc", "idim"])


# -------------------------------------------------------- constructor
def test_check_layer_sat_is_a_deprecated_alias():
    model = mlp()
    with pytest.warns(DeprecationWarning, match="SaturationTracker"):
        tracker = CheckLayerSat("x", modules=model, nosave=True)
    assert isinstance(tracker, SaturationTracker)
    tracker.close()
    from delve.torchcallback import CheckLayerSat as Legacy

    with pytest.warns(DeprecationWarning):
        Legacy("x", modules=model, nosave=True).close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stats": ["lsat", "entropy"]}, "accepted keys: .*idim.*lsat"),
        ({"stats": []}, "empty"),
        ({"conv_method": "avg"}, "channelwise"),
        ({"timeseries_method": "all"}, "last_timestep"),
        ({"save_to": "excel"}, "accepted keys: .*csv"),
        ({"save_to": ["csv", 3]}, "accepted keys"),
        ({"sat_threshold": 0.0}, r"\(0, 1\]"),
        ({"sat_threshold": 1.5}, r"\(0, 1\]"),
        ({"sat_threshold": -0.2}, r"\(0, 1\]"),
        ({"log_interval": 0}, "log_interval"),
        ({"log_interval": 1.5}, "log_interval"),
        ({"max_samples": 0}, "max_samples"),
        ({"interpolation_strategy": "cubic"}, "bilinear"),
        ({"modules": nn.Sequential(nn.ReLU())}, "nothing to track"),
        ({"modules": None}, "modules"),
        ({"layer_filter": "nope"}, "matches no tracked layer"),
        ({"ignore_layer_names": ["nope"]}, "matches no tracked layer"),
    ],
)
def test_constructor_value_errors(kwargs, message):
    arguments = {"modules": mlp(), "nosave": True, **kwargs}
    with pytest.raises(ValueError, match=message):
        SaturationTracker("x", **arguments)


def test_threshold_one_is_accepted(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    with SaturationTracker("x", modules=model, nosave=True, sat_threshold=1.0, stats=["idim"]) as tracker:
        model(torch.randn(50, 4))
        assert tracker.add_saturations()["train-intrinsic-dimensionality_0"] == 4


def test_legacy_stats_spelling_and_returned_dict():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    capture = Capture(submodules(model, {"0": "0", "2": "2"}))
    with SaturationTracker("x", modules=model, nosave=True, stats=["lsat", "lsat_eval", "idim_eval"]) as tracker:
        assert tracker.stats == ["lsat", "idim"]
        model(torch.randn(20, 6))
        model.eval()
        model(torch.randn(20, 6))
        values = tracker.add_saturations()
    expected = {(name, mode): capture.rows(name, mode) for name in ("0", "2") for mode in ("train", "eval")}
    assert_values_match(values, expected, ["lsat", "idim"])
    assert list(values) == [
        "train-saturation_0", "train-intrinsic-dimensionality_0", "eval-saturation_0",
        "eval-intrinsic-dimensionality_0", "train-saturation_2", "train-intrinsic-dimensionality_2",
        "eval-saturation_2", "eval-intrinsic-dimensionality_2",
    ]  # fmt: skip


def test_dead_layer_gives_zero_saturation(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
    with SaturationTracker(str(tmp_path / "run"), modules=model, stats=["lsat", "idim", "det"]) as tracker:
        model(torch.randn(20, 4))
        values = tracker.add_saturations()
    assert values == {
        "train-saturation_0": 0.0,
        "train-intrinsic-dimensionality_0": 0,
        "train-covariance-log-determinant_0": -np.inf,
    }
    frame = pd.read_csv(tmp_path / "run.csv", sep=";", index_col="epoch")
    assert frame.loc[0, "train-saturation_0"] == 0.0
    assert frame.loc[0, "train-covariance-log-determinant_0"] == -np.inf


# -------------------------------------------------------------- package
def test_import_prints_nothing():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-c", "import delve, delve.torchcallback, delve.torch_utils"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    assert result.stdout == ""
    assert result.stderr == ""


def test_package_exports_and_legacy_paths():
    import delve.torch_utils
    import delve.torchcallback

    assert delve.torchcallback.SaturationTracker is SaturationTracker
    assert delve.torchcallback.CheckLayerSat is CheckLayerSat
    assert delve.torch_utils.TorchCovarianceMatrix is delve.TorchCovarianceMatrix
    assert isinstance(delve.__version__, str) and delve.__version__
    for name in ("intrinsic_dimensionality", "saturation", "covariance_trace", "diagonal_trace", "log_determinant"):
        assert callable(getattr(delve, name))
