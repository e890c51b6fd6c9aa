"""state_dict / load_state_dict: complete, safe to load, and an exact continuation."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from delve import SaturationTracker, TorchCovarianceMatrix

STATS = ["lsat", "idim", "cov", "det", "trc", "dtrc", "embed"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def data(epochs: int = 2, steps: int = 7) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(123)
    return [
        [
            (torch.randn(8, 2, 6, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(steps)
        ]
        for _ in range(epochs)
    ]


def fresh(savefile: str, **kwargs):
    torch.manual_seed(7)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = SaturationTracker(savefile, modules=model, stats=STATS, log_interval=2, embed_size=9, **kwargs)
    return model, optimizer, tracker


def step(model, optimizer, x, y) -> None:
    model.train()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        model(x[:3])


def assert_same_values(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(actual[name], value), name
        else:
            assert actual[name] == value, name


def test_restoring_mid_epoch_continues_exactly(tmp_path) -> None:
    batches = data()
    # Uninterrupted reference run. It saves a checkpoint where the other run is killed, as a
    # training run does: saving merges the small batches held back, which moves the rounding of the
    # co-moment by about 1e-16 against a run that never saves (compared below).
    model, optimizer, tracker = fresh(str(tmp_path / "straight" / "run"))
    reference = []
    for e, epoch in enumerate(batches):
        for i, (x, y) in enumerate(epoch):
            if (e, i) == (1, 4):
                tracker.state_dict()
            step(model, optimizer, x, y)
        reference.append(tracker.add_saturations())
    tracker.close()
    model, optimizer, unsaved = fresh(str(tmp_path / "unsaved" / "run"))
    for epoch in batches:
        for x, y in epoch:
            step(model, optimizer, x, y)
        never_saved = unsaved.add_saturations()
    unsaved.close()
    for name, value in never_saved.items():
        np.testing.assert_allclose(value, reference[1][name], rtol=1e-12, atol=1e-12, err_msg=name)

    # The same run, checkpointed after 4 steps of epoch 1, then "killed".
    savefile = str(tmp_path / "resumed" / "run")
    model, optimizer, tracker = fresh(savefile)
    for x, y in batches[0]:
        step(model, optimizer, x, y)
    first = tracker.add_saturations()
    for x, y in batches[1][:4]:
        step(model, optimizer, x, y)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "tracker": tracker.state_dict()}, checkpoint
    )
    del model, optimizer, tracker

    # A new process would start here: everything is built again, then restored.
    model, optimizer, tracker = fresh(savefile)
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    tracker.load_state_dict(state["tracker"])
    assert tracker.epoch == 1
    for x, y in batches[1][4:]:
        step(model, optimizer, x, y)
    second = tracker.add_saturations()
    tracker.close()

    assert_same_values(first, reference[0])
    assert_same_values(second, reference[1])
    assert {"train-embedded-sample_fc", "eval-saturation_conv"} <= set(second)
    # The CSV already on disk was continued, not overwritten.
    straight = pd.read_csv(tmp_path / "straight" / "run.csv", sep=";", index_col=0)
    resumed = pd.read_csv(tmp_path / "resumed" / "run.csv", sep=";", index_col=0)
    pd.testing.assert_frame_equal(resumed, straight)


def test_state_holds_every_accumulator_as_float64_tensors(tmp_path) -> None:
    model, optimizer, tracker = fresh(str(tmp_path / "run"), max_samples=100)
    for x, y in data(1, 5)[0]:
        step(model, optimizer, x, y)
    state = tracker.state_dict()
    assert state["epoch"] == 0
    assert state["forward_order"] == ["conv", "fc", "out"]
    assert set(state["layers"]) == {"conv", "fc", "out"}
    for name, layer in state["layers"].items():
        recorder = tracker._recording.recorders[name]
        assert set(layer) == {"train", "eval"}
        for mode, saved in layer.items():
            live = recorder.modes[mode]
            covariance = saved["accumulators"]["covariance"]
            moments = covariance["moments"]
            assert moments["mean"].dtype == moments["comoment_upper"].dtype == torch.float64
            d = moments["mean"].shape[0]
            # Half the symmetric matrix: its upper triangle, row by row; small batches held back to be
            # merged together were merged before saving, so no rows travel.
            assert moments["comoment_upper"].shape == (d * (d + 1) // 2,)
            assert "pending" not in covariance
            assert int(moments["count"]) == live.covariance.count > 0
            assert int(covariance.get("rejected", 0)) == 0
            restored = TorchCovarianceMatrix()
            restored.load_state_dict(covariance)
            np.testing.assert_allclose(restored.fix().numpy(), live.covariance.fix().numpy(), rtol=1e-14)
            assert saved["forward_calls"] == live.forward_calls == 5
            assert saved["rows_offered"] == live.rows_offered
            embed = saved["accumulators"]["embed"]
            assert embed["sample"]["rows"].dtype == torch.float64
            assert embed["sample"]["rows"].shape == (9, d)
            assert embed["generators"]["cpu"].dtype == torch.uint8
    # Only plain types and tensors: nothing that needs pickle's full power.
    _assert_plain(state)
    tracker.close()


def _assert_plain(value) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _assert_plain(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _assert_plain(item)
    else:
        assert isinstance(value, (torch.Tensor, int, float, str, bool)) or value is None, type(value)


def test_state_is_a_snapshot(tmp_path) -> None:
    model, optimizer, tracker = fresh(str(tmp_path / "run"), nosave=True)
    x, y = data(1, 1)[0][0]
    step(model, optimizer, x, y)
    state = tracker.state_dict()
    before = state["layers"]["fc"]["train"]["accumulators"]["covariance"]["moments"]["comoment_upper"].clone()
    rows = state["layers"]["fc"]["train"]["accumulators"]["embed"]["sample"]["rows"].clone()
    for _ in range(4):
        step(model, optimizer, x * 3, y)
    covariance = state["layers"]["fc"]["train"]["accumulators"]["covariance"]
    assert torch.equal(covariance["moments"]["comoment_upper"], before)
    assert torch.equal(state["layers"]["fc"]["train"]["accumulators"]["embed"]["sample"]["rows"], rows)
    tracker.close()


def test_loading_between_epochs_and_with_initial_epoch(tmp_path) -> None:
    savefile = str(tmp_path / "run")
    model, optimizer, tracker = fresh(savefile)
    for epoch in data(3, 2):
        for x, y in epoch:
            step(model, optimizer, x, y)
        tracker.add_saturations()
    checkpoint = {"tracker": tracker.state_dict()}
    tracker.close()
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    before = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)

    model, optimizer, tracker = fresh(savefile, initial_epoch=3)
    tracker.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["tracker"])
    for x, y in data(1, 2)[0]:
        step(model, optimizer, x, y)
    tracker.add_saturations()
    tracker.close()
    after = pd.read_csv(tmp_path / "run.csv", sep=";", index_col=0)
    assert after.index.tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(after.loc[[0, 1, 2]], before)


def test_bad_states_are_refused(tmp_path) -> None:
    model, _, tracker = fresh(str(tmp_path / "run"), nosave=True)
    state = tracker.state_dict()
    with pytest.raises(ValueError, match="does not track"):
        tracker.load_state_dict({**state, "layers": {**state["layers"], "extra": {}}})
    with pytest.raises(ValueError, match="not a SaturationTracker state"):
        tracker.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="newer"):
        tracker.load_state_dict({**state, "format": 99})
    tracker.close()


def test_state_of_a_subset_of_layers_loads(tmp_path) -> None:
    model, optimizer, tracker = fresh(str(tmp_path / "run"), nosave=True)
    x, y = data(1, 1)[0][0]
    step(model, optimizer, x, y)
    state = tracker.state_dict()
    other = SaturationTracker("other", modules=model, nosave=True, stats=STATS, layer_filter=["fc", "out"])
    other.load_state_dict({**state, "layers": {k: state["layers"][k] for k in ("fc", "out")}})
    assert (
        other._recording.recorders["fc"].modes["train"].covariance.count
        == tracker._recording.recorders["fc"].modes["train"].covariance.count
    )
    other.close()
    tracker.close()


def test_mid_epoch_restore_with_max_positions_is_exact() -> None:
    """The random start of the recorded positions is drawn from a generator that travels in the state."""

    def net() -> nn.Module:
        torch.manual_seed(4)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))

    generator = torch.Generator().manual_seed(9)
    batches = [torch.randn(4, 3, 12, 12, generator=generator) for _ in range(6)]
    first, second = net(), net()
    settings = {"nosave": True, "stats": ["cov"], "max_positions": 10}
    uninterrupted = SaturationTracker("a", modules=first, **settings)
    with torch.no_grad():
        for batch in batches[:3]:
            first(batch)
        state = uninterrupted.state_dict()
        restored = SaturationTracker("b", modules=second, **settings)
        # The other tracker draws from its own stream: no global state is shared.
        for batch in batches[:2]:
            second(batch)
        restored.reset()
        restored.load_state_dict(state)
        for batch in batches[3:]:
            first(batch)
            second(batch)
    expected, actual = uninterrupted.add_saturations(), restored.add_saturations()
    assert set(expected) == set(actual)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)
    uninterrupted.close()
    restored.close()


def test_a_layer_state_is_about_half_a_matrix_even_with_rows_held_back() -> None:
    d = 256
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, d))
    tracker = SaturationTracker("half", modules=model, nosave=True, stats=["lsat"])
    outputs = []
    with torch.no_grad():
        for _ in range(3):
            outputs.append(model(torch.randn(16, 32)))  # 16 rows of 256 features: held back for a block
    saved = tracker.state_dict()["layers"]["0"]["train"]["accumulators"]["covariance"]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    assert buffer.tell() <= 0.55 * d * d * 8
    restored = TorchCovarianceMatrix()
    restored.load_state_dict(saved)
    rows = torch.cat(outputs).double().numpy()
    np.testing.assert_allclose(restored.fix().numpy(), np.cov(rows, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)
    tracker.close()
