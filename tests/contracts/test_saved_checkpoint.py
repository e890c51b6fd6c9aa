"""A state saved by delve 0.2.0 (``tests/fixtures/checkpoint_0_2_0.pt``) still loads, and means the same.

The fixture holds the model's weights and the batches it saw; the outputs are
recomputed here with a plain forward hook and compared with numpy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import np_cov, np_idim, np_saturation
from torch import nn

from delve import SaturationTracker

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_0_2_0.pt"
LAYERS = {"0": 0, "3": 3, "5": 5}


def build_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(80, 7), nn.ReLU(), nn.Linear(7, 3))


def saved() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def rows_of(model: nn.Module, batches: list[torch.Tensor], training: bool) -> dict[str, np.ndarray]:
    """Every tracked layer's output rows (a convolution's positions are rows), by an independent hook."""
    captured: dict[str, list[np.ndarray]] = {name: [] for name in LAYERS}
    handles = []
    for name, index in LAYERS.items():

        def hook(module, inputs, output, name=name):
            out = output.detach().double().numpy()
            if out.ndim == 4:
                out = out.transpose(0, 2, 3, 1).reshape(-1, out.shape[1])
            captured[name].append(out)

        handles.append(model[index].register_forward_hook(hook))
    model.train(training)
    with torch.no_grad():
        for x in batches:
            model(x)
    for handle in handles:
        handle.remove()
    return {name: np.concatenate(parts) for name, parts in captured.items()}


def test_a_saved_state_gives_the_statistics_of_the_rows_it_saw() -> None:
    state = saved()
    model = build_model()
    model.load_state_dict(state["model"])
    train = rows_of(model, state["train"], training=True)
    evaluation = rows_of(model, state["eval"], training=False)
    stats = ["lsat", "idim", "embed", "dorm"]
    tracker = SaturationTracker("run", modules=model, stats=stats, embed_size=11, nosave=True)
    tracker.load_state_dict(state["tracker"])
    values = tracker.add_saturations()
    tracker.close()
    for mode, rows in (("train", train), ("eval", evaluation)):
        for layer, data in rows.items():
            cov = np_cov(data)
            if data.shape[0] < data.shape[1]:  # fewer rows than features: missing, with the rows beside them
                assert math.isnan(values[f"{mode}-saturation_{layer}"])
                assert values[f"{mode}-rows_{layer}"] == data.shape[0]
            else:
                assert values[f"{mode}-saturation_{layer}"] == np_saturation(cov, 0.99)
                assert values[f"{mode}-intrinsic-dimensionality_{layer}"] == np_idim(cov, 0.99)
            mean_abs = np.abs(data).mean(0)
            expected_dormant = float(np.mean(mean_abs <= 0.025 * mean_abs.mean()))
            assert values[f"{mode}-dormant-fraction_{layer}"] == expected_dormant
            # The embedded sample: each point is a recorded row on the top two eigenvectors (up to sign).
            vectors = np.linalg.eigh(cov)[1][:, ::-1][:, :2]
            projected = np.abs((data - data.mean(0)) @ vectors)
            points = np.abs(values[f"{mode}-embedded-sample_{layer}"])
            assert points.shape == (min(11, data.shape[0]), 2)
            distance = np.abs(points[:, None, :] - projected[None, :, :]).max(-1).min(-1)
            assert distance.max() < 1e-6


def test_a_saved_budgeted_state_keeps_its_rows_and_random_streams() -> None:
    state = saved()["budgeted"]
    model = build_model()
    tracker = SaturationTracker("run", modules=model, max_overhead=0.05, max_positions=4, nosave=True)
    tracker.load_state_dict(state)
    restored = tracker.state_dict()
    assert torch.equal(restored["positions_generator"], state["positions_generator"])
    assert set(restored["row_sampler"]) == set(state["row_sampler"])
    for key, value in state["row_sampler"].items():
        assert torch.equal(restored["row_sampler"][key], value)
    with pytest.warns(RuntimeWarning, match="fewer than 20 per feature"):  # the saved epoch has a few rows only
        values = tracker.add_saturations()
    tracker.close()
    for layer in LAYERS:
        saved_count = int(state["layers"][layer]["train"]["covariance"]["count"])
        assert values[f"train-rows_{layer}"] == saved_count
