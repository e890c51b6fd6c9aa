"""Effective rank, participation ratio, spectral decay and dormant units: hand values and numpy references."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from delve import SaturationTracker
from delve.engine.activity import MeanAbsoluteActivity
from delve.statistics.metrics import dormant_fraction, effective_rank, participation_ratio, spectral_decay_exponent
from delve.statistics.registry import STATISTICS, resolve_stats

f64 = torch.float64


# ------------------------------------------------------------ hand-computed values
def test_effective_rank_hand_values():
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2, exp(H) = 2^1.5.
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=f64)) == pytest.approx(2**1.5, rel=1e-12)
    assert effective_rank(torch.tensor([5.0, 5.0, 5.0], dtype=f64)) == pytest.approx(3.0, rel=1e-12)
    assert effective_rank(torch.tensor([7.0, 0.0, 0.0], dtype=f64)) == pytest.approx(1.0, rel=1e-12)
    # Scale invariant.
    assert effective_rank(torch.tensor([3e-9, 1e-9], dtype=f64)) == pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12
    )


def test_participation_ratio_hand_values():
    # (2 + 1 + 1)^2 / (4 + 1 + 1) = 16 / 6.
    assert participation_ratio(torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=f64)) == pytest.approx(8 / 3, rel=1e-12)
    assert participation_ratio(torch.tensor([4.0, 4.0], dtype=f64)) == pytest.approx(2.0, rel=1e-12)
    assert participation_ratio(torch.tensor([1e-12, 0.0], dtype=f64)) == pytest.approx(1.0, rel=1e-12)


def test_spectral_decay_hand_values():
    # 36 * i^-2 at i = 1, 2, 3: the points (log i, log 36 - 2 log i) lie on a line of slope -2.
    assert spectral_decay_exponent(torch.tensor([36.0, 9.0, 4.0], dtype=f64)) == pytest.approx(2.0, rel=1e-12)
    # Two points: alpha = log(9 / 1) / log 2.
    assert spectral_decay_exponent(torch.tensor([9.0, 1.0, 0.0], dtype=f64)) == pytest.approx(
        math.log(9) / math.log(2), rel=1e-12
    )
    flat = torch.full((6,), 3.0, dtype=f64)
    assert spectral_decay_exponent(flat) == pytest.approx(0.0, abs=1e-12)
    # Only the top 3 enter the fit: the tail below does not matter.
    mixed = torch.tensor([36.0, 9.0, 4.0, 3.9, 3.8], dtype=f64)
    assert spectral_decay_exponent(mixed, top=3) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="top"):
        spectral_decay_exponent(mixed, top=1)


def test_spectral_decay_ignores_round_off_eigenvalues():
    # A rank-2 spectrum with round-off tail: only the two real eigenvalues are fitted.
    values = torch.tensor([4.0, 1.0, 3e-16, 1e-17, 0.0], dtype=f64)
    assert spectral_decay_exponent(values) == pytest.approx(2.0, rel=1e-12)


def test_spectral_decay_matches_numpy_least_squares():
    rng = np.random.default_rng(0)
    values = np.sort(rng.uniform(0.01, 10, size=30))[::-1]
    slope = np.polyfit(np.log(np.arange(1, 31)), np.log(values), 1)[0]
    assert spectral_decay_exponent(torch.from_numpy(values.copy())) == pytest.approx(-slope, rel=1e-10)


def test_dormant_fraction_hand_values():
    # mean |h| = (4 + 0.1 + 0 + 3.9) / 4 = 2; limit 0.025 * 2 = 0.05: only the 0 unit is dormant.
    m = torch.tensor([4.0, 0.1, 0.0, 3.9], dtype=f64)
    assert dormant_fraction(m) == 0.25
    # tau = 0.05 puts the limit at 0.1 exactly: "at most" includes it.
    assert dormant_fraction(m, tau=0.05) == 0.5
    assert dormant_fraction(m, tau=0) == 0.25
    with pytest.raises(ValueError, match="tau"):
        dormant_fraction(m, tau=-1)


def test_dead_layer_values_are_defined():
    zeros = torch.zeros(5, dtype=f64)
    assert effective_rank(zeros) == 0.0
    assert participation_ratio(zeros) == 0.0
    assert spectral_decay_exponent(zeros) == 0.0
    assert dormant_fraction(zeros) == 1.0


# ---------------------------------------------------------- the activity accumulator
def test_mean_abs_accumulator_matches_numpy_and_skips_nonfinite_batches():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((17, 4)), rng.standard_normal((3, 5, 4)), rng.standard_normal((2, 2, 2, 4))]
    acc = MeanAbsoluteActivity()
    for batch in batches:
        acc.update(torch.from_numpy(batch).float())
    poisoned = torch.ones(6, 4)
    poisoned[2, 1] = float("nan")
    acc.update(poisoned)
    rows = np.concatenate([b.reshape(-1, 4) for b in batches]).astype(np.float32)
    assert acc.count == len(rows)
    np.testing.assert_allclose(acc.mean_abs().numpy(), np.abs(rows).mean(0), rtol=1e-6)


def test_mean_abs_accumulator_state_merge_and_reset():
    a, b = MeanAbsoluteActivity(), MeanAbsoluteActivity()
    x, y = torch.randn(10, 3), torch.randn(7, 3)
    a.update(x)
    b.update(y)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    restored = MeanAbsoluteActivity()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.merge(b)
    expected = torch.cat([x, y]).abs().double().mean(0)
    torch.testing.assert_close(restored.mean_abs(), expected)
    restored.reset()
    assert restored.count == 0 and restored.state_dict() == {}
    with pytest.raises(ValueError, match="feature size"):
        a.update(torch.randn(2, 4))


# ------------------------------------------------------------------- registrations
def test_registered_keys_and_names():
    expected = {
        "erank": "effective-rank",
        "pr": "participation-ratio",
        "alpha": "spectral-decay",
        "dorm": "dormant-fraction",
    }
    for key, name in expected.items():
        assert STATISTICS[key].name == name and "_" not in name and STATISTICS[key].scalar
    assert STATISTICS["dorm"].accumulator is MeanAbsoluteActivity
    assert resolve_stats(["erank", "erank_eval", "dorm_eval"]) == ["erank", "dorm"]


# ------------------------------------------------------- through a tracker vs numpy
def _spectrum_stats(rows: np.ndarray) -> dict[str, float]:
    """Independent numpy versions of the four statistics on the concatenated rows."""
    centred = rows - rows.mean(0)
    values = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(rows))[::-1], 0, None)
    p = values / values.sum()
    p = p[p > 0]
    positive = values[values > len(values) * np.finfo(np.float64).eps * values[0]]
    slope = np.polyfit(np.log(np.arange(1, len(positive) + 1)), np.log(positive), 1)[0]
    m = np.abs(rows).mean(0)
    return {
        "effective-rank": float(np.exp(-(p * np.log(p)).sum())),
        "participation-ratio": float(values.sum() ** 2 / (values**2).sum()),
        "spectral-decay": float(-slope),
        "dormant-fraction": float(np.mean(m <= 0.025 * m.mean())),
    }


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.dead = nn.Linear(12, 5)
        with torch.no_grad():
            # Half of the conv channels never respond: dormant units.
            self.conv.weight[:3] = 0.0
            self.conv.bias[:3] = 0.0
            self.dead.weight.zero_()
            self.dead.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.dead(torch.relu(self.fc(h.flatten(1))))


def test_tracker_values_match_numpy_on_concatenated_rows():
    torch.manual_seed(0)
    net = _Net().double()
    captured: dict[str, list[np.ndarray]] = {"conv": [], "fc": []}
    net.conv.register_forward_hook(
        lambda m, i, o: captured["conv"].append(o.permute(0, 2, 3, 1).reshape(-1, 6).numpy())
    )
    net.fc.register_forward_hook(lambda m, i, o: captured["fc"].append(o.detach().numpy()))
    tracker = SaturationTracker(
        "extra", modules=net, stats=["erank", "pr", "alpha", "dorm_eval"], nosave=True
    )
    with torch.no_grad():
        for batch_size in (40, 25, 31):
            net(torch.randn(batch_size, 3, 6, 6, dtype=torch.float64))
    values = tracker.add_saturations()
    tracker.close()

    for layer, batches in captured.items():
        expected = _spectrum_stats(np.concatenate(batches))
        for name, value in expected.items():
            assert values[f"train-{name}_{layer}"] == pytest.approx(value, rel=1e-8, abs=1e-12), (layer, name)
    assert values["train-dormant-fraction_conv"] == 0.5
    # The all-zero layer: defined values, no NaN.
    assert values["train-effective-rank_dead"] == 0.0
    assert values["train-participation-ratio_dead"] == 0.0
    assert values["train-spectral-decay_dead"] == 0.0
    assert values["train-dormant-fraction_dead"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in values.values())


def test_dormant_accumulator_resets_each_epoch_and_survives_tracker_state_dict():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0]]))
        layer.bias.zero_()
    tracker = SaturationTracker("dorm", modules=layer, stats=["dorm"], nosave=True)
    with torch.no_grad():
        layer(torch.randn(20, 4))
    assert tracker.add_saturations()["train-dormant-fraction_linear"] == pytest.approx(1 / 3)

    # Epoch 2: the third unit now fires strongly; the first epoch must not linger.
    with torch.no_grad():
        layer.weight[2, 2] = 50.0
        layer.weight[0, 0] = 0.0
        x1, x2 = torch.randn(10, 4), torch.randn(15, 4)
        layer(x1)
        state = tracker.state_dict()
        layer(x2)
    values = tracker.add_saturations()
    rows = np.abs(layer(torch.cat([x1, x2])).detach().numpy()).mean(0)
    assert values["train-dormant-fraction_linear"] == pytest.approx(float(np.mean(rows <= 0.025 * rows.mean())))

    # A checkpoint taken mid-epoch restores the activity sums as well.
    fresh = SaturationTracker("dorm2", modules=nn.Linear(4, 3), stats=["dorm"], nosave=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    recorder = next(iter(fresh._recording.recorders.values()))
    restored = recorder.modes["train"].accumulators["dorm"].mean_abs()
    torch.testing.assert_close(restored, layer(x1).detach().abs().double().mean(0))
    tracker.close()
    fresh.close()
