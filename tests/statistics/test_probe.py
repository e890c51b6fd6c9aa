"""Live probes against scikit-learn's Ridge on the concatenated pooled features of the same samples."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from probe_reference import ridge_probe
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from torch import nn

from delve import SaturationTracker
from delve.statistics.registry import STATISTICS, by_name

RIDGE = 1e-2


def reference(train_x, train_y, eval_x, eval_y, classes: bool, ridge: float = RIDGE) -> dict[str, float]:
    """scikit-learn: Ridge with alpha = lambda * N on the train samples, scored on each mode's samples."""
    return ridge_probe(train_x, train_y, eval_x, eval_y, classes, ridge)


def capture(module: nn.Module, pool) -> tuple[list[np.ndarray], object]:
    """An independent forward hook recording ``pool(output)`` per forward pass."""
    seen: list[np.ndarray] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(pool(o).detach().double().numpy()))
    return seen, handle


def run_epoch(model, tracker, train, evaluation) -> dict:
    with torch.no_grad():
        model.train()
        for x, y in train:
            tracker.set_targets(y)
            model(x)
        model.eval()
        for x, y in evaluation:
            tracker.set_targets(y)
            model(x)
    return tracker.add_saturations()


def check(values: dict, layer: str, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        mode, part = name.split("-")
        assert values[f"{mode}-probe-{part}_{layer}"] == pytest.approx(value, rel=1e-7, abs=1e-9), name


def batches(count: int, n: int, make_x, classes: int | None, generator) -> list:
    out = []
    for _ in range(count):
        x = make_x(n, generator)
        y = torch.randint(0, classes, (n,), generator=generator) if classes else torch.randn(n, 2, generator=generator)
        out.append((x, y))
    return out


def test_linear_layer_class_probe_matches_ridge() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(n, 6, generator=generator) for n in (40, 40, 40, 40, 40, 30, 30)]
    # Learnable classes: the label follows the signs of two inputs.
    labelled = [(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()) for x in inputs]
    train, evaluation = labelled[:5], labelled[5:]
    seen, handle = capture(model[0], lambda o: o)
    tracker = SaturationTracker("p", modules=model, stats=["probe"], probe_ridge=RIDGE, nosave=True)
    values = run_epoch(model, tracker, train, evaluation)
    handle.remove()
    tracker.close()
    features = np.concatenate(seen)
    train_x, eval_x = features[:200], features[200:]
    train_y = np.concatenate([y.numpy() for _, y in train])
    eval_y = np.concatenate([y.numpy() for _, y in evaluation])
    expected = reference(train_x, train_y, eval_x, eval_y, classes=True)
    check(values, "0", expected)
    assert 0.5 < expected["eval-accuracy"] < 1.0  # above chance (1/3), not trivially perfect


def test_conv_layer_probe_reads_the_mean_over_positions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 4))
    generator = torch.Generator().manual_seed(2)
    train = batches(4, 25, lambda n, g: torch.randn(n, 2, 6, 6, generator=g), 4, generator)
    evaluation = batches(2, 20, lambda n, g: torch.randn(n, 2, 6, 6, generator=g), 4, generator)
    seen, handle = capture(model[0], lambda o: o.mean(dim=(2, 3)))
    tracker = SaturationTracker("p", modules=model, stats=["lsat", "probe"], probe_ridge=RIDGE, nosave=True)
    values = run_epoch(model, tracker, train, evaluation)
    handle.remove()
    tracker.close()
    features = np.concatenate(seen)
    expected = reference(
        features[:100],
        np.concatenate([y.numpy() for _, y in train]),
        features[100:],
        np.concatenate([y.numpy() for _, y in evaluation]),
        classes=True,
    )
    check(values, "0", expected)


class SequenceNet(nn.Module):
    """A sequence-first LSTM, a token-wise Linear and batch-first attention: three ways to hold samples."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5)
        self.proj = nn.Linear(5, 6)
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, 3)
        steps, _ = self.lstm(x.transpose(0, 1))  # (T, N, 5)
        tokens = self.proj(steps.transpose(0, 1))  # (N, T, 6)
        attended, _ = self.attention(tokens, tokens, tokens)
        return attended.mean(1)


def test_sequence_layers_with_real_targets_match_ridge() -> None:
    torch.manual_seed(0)
    model = SequenceNet()
    generator = torch.Generator().manual_seed(3)
    train = batches(4, 30, lambda n, g: torch.randn(n, 7, 3, generator=g), None, generator)
    evaluation = batches(2, 25, lambda n, g: torch.randn(n, 7, 3, generator=g), None, generator)
    pools = {
        "lstm": (model.lstm, lambda o: o[0].mean(0)),
        "proj": (model.proj, lambda o: o.mean(1)),
        "attention": (model.attention, lambda o: o[0].mean(1)),
    }
    hooks = {name: capture(module, pool) for name, (module, pool) in pools.items()}
    tracker = SaturationTracker("p", modules=model, stats=["probe"], probe_ridge=RIDGE, nosave=True)
    values = run_epoch(model, tracker, train, evaluation)
    tracker.close()
    train_y = np.concatenate([y.numpy() for _, y in train])
    eval_y = np.concatenate([y.numpy() for _, y in evaluation])
    for layer, (seen, handle) in hooks.items():
        handle.remove()
        features = np.concatenate(seen)
        expected = reference(features[:120], train_y, features[120:], eval_y, classes=False)
        check(values, layer, expected)
        assert f"train-probe-accuracy_{layer}" not in values  # no classes, no accuracy


def test_one_dimensional_real_targets_and_no_ridge() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    generator = torch.Generator().manual_seed(4)
    xs = [torch.randn(50, 4, generator=generator) for _ in range(3)]
    train = [(x, x[:, 0] * 2.0 - x[:, 3] + 0.1 * torch.randn(50, generator=generator)) for x in xs]
    tracker = SaturationTracker("p", modules=layer, stats=["probe"], probe_ridge=0.0, nosave=True)
    values = run_epoch(layer, tracker, train, [])
    tracker.close()
    with torch.no_grad():
        features = torch.cat([layer(x) for x, _ in train]).double().numpy()
    targets = torch.cat([y for _, y in train]).double().numpy()
    fitted = Ridge(alpha=0.0, solver="svd").fit(features, targets)
    assert values["train-probe-r2_linear"] == pytest.approx(r2_score(targets, fitted.predict(features)), rel=1e-9)
    assert not any(name.startswith("eval-probe") for name in values)  # no evaluation samples: nothing logged


def test_evaluation_before_training_gives_the_same_epoch_probe() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(5)
    train = batches(3, 30, lambda n, g: torch.randn(n, 5, generator=g), 2, generator)
    evaluation = batches(2, 30, lambda n, g: torch.randn(n, 5, generator=g), 2, generator)
    results = []
    for eval_first in (False, True):
        torch.manual_seed(0)
        layer = nn.Linear(5, 4)
        tracker = SaturationTracker("p", modules=layer, stats=["probe"], nosave=True)
        with torch.no_grad():
            order = [("eval", evaluation), ("train", train)] if eval_first else [("train", train), ("eval", evaluation)]
            for mode, steps in order:
                layer.train(mode == "train")
                for x, y in steps:
                    tracker.set_targets(y)
                    layer(x)
        results.append(tracker.add_saturations())
        tracker.close()
    assert results[0].keys() == results[1].keys()
    for name, value in results[0].items():
        assert results[1][name] == pytest.approx(value, rel=1e-12), name


def test_missing_partial_and_misaligned_targets() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    tracker = SaturationTracker("p", modules=layer, stats=["lsat", "probe"], nosave=True)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        layer(torch.randn(20, 3, generator=generator))  # no targets yet: no probe rows
        values = tracker.add_saturations()
        assert "train-saturation_linear" in values
        assert not any("probe" in name for name in values)
        # Partial: only the batches with targets count, and set_targets(None) stops.
        x = torch.randn(30, 3, generator=generator)
        y = (x[:, 0] > 0).long()
        tracker.set_targets(y)
        layer(x)
        tracker.set_targets(None)
        layer(torch.randn(10, 3, generator=generator))
        values = tracker.add_saturations()
        probe = tracker._recording.recorders["linear"].modes["train"].accumulators["probe"]
        assert probe.joint is None  # the new epoch starts empty
        with pytest.raises(ValueError, match=r"saw 7 samples .* gave 30 targets"):
            tracker.set_targets(y)
            layer(torch.randn(7, 3))
    tracker.close()
    features = layer(x).detach().double().numpy()
    expected = reference(features, y.numpy(), features, y.numpy(), classes=True, ridge=1e-3)
    assert values["train-probe-accuracy_linear"] == pytest.approx(expected["train-accuracy"])


def test_targets_and_arguments_are_checked_early() -> None:
    layer = nn.Linear(3, 2)
    with SaturationTracker("p", modules=layer, nosave=True) as tracker, pytest.raises(ValueError, match="probe"):
        tracker.set_targets(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="probe_ridge"):
        SaturationTracker("p", modules=layer, stats=["probe"], probe_ridge=-1.0, nosave=True)
    with SaturationTracker("p", modules=layer, stats=["probe"], nosave=True) as tracker:
        for bad, message in (
            (torch.zeros(3, 4, dtype=torch.long), "token-level"),
            (torch.tensor([True, False]), "dtype"),
            ([0, 1], "torch.Tensor"),
            (torch.tensor([-1, 0]), "class indices"),
            (torch.zeros(2, 3, 4), r"\(N,\) or \(N, c\)"),
        ):
            with pytest.raises(ValueError, match=message):
                tracker.set_targets(bad)


def test_checkpoint_mid_epoch_continues_the_probe_exactly() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(7)
    steps = batches(6, 20, lambda n, g: torch.randn(n, 4, generator=g), 3, generator)

    def fresh():
        torch.manual_seed(0)
        layer = nn.Linear(4, 5)
        return layer, SaturationTracker("p", modules=layer, stats=["probe"], nosave=True)

    layer, straight = fresh()
    with torch.no_grad():
        for index, (x, y) in enumerate(steps):
            if index == 3:
                buffer = io.BytesIO()
                torch.save(straight.state_dict(), buffer)
            straight.set_targets(y)
            layer(x)
    expected = straight.add_saturations()
    layer, resumed = fresh()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        for x, y in steps[3:]:
            resumed.set_targets(y)
            layer(x)
    values = resumed.add_saturations()
    assert values.keys() == expected.keys()
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-12), name
    straight.close()
    resumed.close()


def test_the_probe_is_one_record_with_two_logged_values() -> None:
    statistic = STATISTICS["probe"]
    assert statistic.logged_names == ("probe-r2", "probe-accuracy")
    assert by_name("probe-accuracy").bounds == (0.0, 1.0)
    assert by_name("probe-r2").bounds == (None, 1.0)
    assert not statistic.from_covariance


def test_an_epoch_without_training_samples_logs_missing_values() -> None:
    layer = nn.Linear(3, 2).eval()
    tracker = SaturationTracker("p", modules=layer, stats=["probe"], nosave=True)
    x = torch.randn(12, 3)
    tracker.set_targets((x[:, 0] > 0).long())
    with torch.no_grad():
        layer(x)
    values = tracker.add_saturations()
    tracker.close()
    assert math.isnan(values["eval-probe-r2_linear"]) and math.isnan(values["eval-probe-accuracy_linear"])


def test_the_bounded_sample_keeps_the_rows_of_the_smallest_keys_over_every_batch() -> None:
    from delve.engine.accumulator import Batch
    from delve.engine.probe import ProbeMoments
    from delve.engine.states import BottomK

    probe = ProbeMoments(seed=11)
    probe.states.kinds["sample"] = BottomK(size=40)  # 300 rows offered: selected several times on the way
    generator = torch.Generator().manual_seed(5)
    offered = []
    for _ in range(30):
        x = torch.randn(10, 3, generator=generator)
        labels = torch.randint(0, 4, (10,), generator=generator)
        probe.accumulate(Batch(x, samples=x, targets=torch.eye(4, dtype=torch.float64)[labels], labels=labels.double()))
        offered.append(torch.cat([x.double(), labels.double().unsqueeze(1)], dim=1))
    # The keys the probe draws: one uniform stream seeded by its seed, batch after batch.
    keys = torch.rand(300, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    expected = torch.cat(offered)[torch.argsort(keys)[:40]]
    kept_keys, kept_rows = probe.values()["sample"]
    assert kept_rows.shape == (40, 4)
    assert torch.equal(kept_rows[torch.argsort(kept_keys)], expected)
