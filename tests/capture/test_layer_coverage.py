"""Layers of real model definitions are found: transformers' Conv1D, and a word when some are not."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import delve.capture.observation as observations
from delve import SaturationTracker, register_observer


def test_delve_knows_conv1d_without_importing_transformers() -> None:
    code = (
        "import sys, delve\n"
        "from delve.capture.observation import _BY_PATH\n"
        "assert 'transformers.pytorch_utils.Conv1D' in _BY_PATH\n"
        "assert 'transformers' not in sys.modules, 'importing delve imported transformers'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_projection_of_a_gpt2_model_is_tracked_and_matches_numpy(ref) -> None:
    transformers = pytest.importorskip("transformers", reason="needs pip install 'delve[huggingface]'")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    projections = [name for name, m in model.named_modules() if isinstance(m, (Conv1D, nn.Linear))]
    assert len(projections) == 9  # four Conv1D per block, and the LM head
    captured: dict[str, list[np.ndarray]] = {}

    def keep(key: str):
        def hook(module, inputs, output):
            captured.setdefault(key, []).append(output.detach().reshape(-1, output.shape[-1]).double().numpy())

        return hook

    for name, module in model.named_modules():
        if name in projections:
            module.register_forward_hook(keep(name.replace(".", "-")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left untracked
        tracker = SaturationTracker("gpt2", modules=model, nosave=True, stats=["idim", "trc"])
    assert sorted(tracker.layer_names) == sorted(name.replace(".", "-") for name in projections)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 64, (4, 16)))
    values = tracker.add_saturations()
    tracker.close()
    for layer, outputs in captured.items():
        expected = ref.stats(np.concatenate(outputs))
        assert values[f"eval-intrinsic-dimensionality_{layer}"] == expected["intrinsic-dimensionality"], layer
        assert values[f"eval-covariance-trace_{layer}"] == pytest.approx(expected["covariance-trace"], rel=1e-9)


class Gate(nn.Module):
    """A custom layer with a weight matrix: delve has no observer for it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_untracked_weighted_modules_are_named_once(monkeypatch) -> None:
    monkeypatch.setattr(observations, "_REGISTRY", dict(observations._REGISTRY))
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), Gate(), nn.LayerNorm(4), Gate())
    with pytest.warns(UserWarning, match=r"does not track modules of the classes Gate:.*register_observer") as record:
        tracker = SaturationTracker("g", modules=model, nosave=True)
    assert len([w for w in record if "does not track" in str(w.message)]) == 1
    assert "Embedding" not in str(record[0].message) and "LayerNorm" not in str(record[0].message)
    assert tracker.layer_names == ["1"]
    tracker.close()
    register_observer(Gate, lambda module, output, config: output)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker = SaturationTracker("g", modules=model, nosave=True)
    assert tracker.layer_names == ["1", "2", "4"]
    tracker.close()


def test_a_class_path_is_validated_and_matched(monkeypatch) -> None:
    monkeypatch.setattr(observations, "_BY_PATH", dict(observations._BY_PATH))
    with pytest.raises(ValueError, match=r"package\.module\.Class"):
        register_observer("Gate", lambda module, output, config: output)
    register_observer(f"{Gate.__module__}.Gate", lambda module, output, config: output * 2, kind="custom")
    tracker = SaturationTracker("g", modules=nn.Sequential(Gate()), nosave=True, stats=["trc"])
    x = torch.randn(50, 4)
    with torch.no_grad():
        tracker.layers[0].module(x)
    values = tracker.add_saturations()
    tracker.close()
    expected = float(np.trace(np.cov((2 * x).T.numpy(), bias=True)))
    assert values["train-covariance-trace_0"] == pytest.approx(expected)
