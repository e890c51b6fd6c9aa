"""``device=`` is where all of a layer's state lives: covariance, ``embed`` sample, extras.

The CPU-only suite uses PyTorch's ``meta`` device as the "other" device: the
model computes on the CPU and the tracker is asked to keep its state on
``meta``, so any accumulator left on the rows' device shows up. (The ``embed``
sample draws its keys from a generator, which ``meta`` cannot host; the CUDA
test below covers it when a GPU is present.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import delve.engine.precision as precision_module
from delve import SaturationTracker

GENERATOR_STATE = torch.uint8  # generator states are CPU byte tensors wherever the generator lives


def state_tensors(tracker: SaturationTracker) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a tracker holds as live state (not copies), with a path for messages."""
    for name, recorder in tracker._recording.recorders.items():
        for mode, state in recorder.modes.items():
            owners = state.accumulators
            for owner_name, owner in owners.items():
                if owner is None:
                    continue
                for attribute, value in _attributes(owner):
                    if isinstance(value, torch.Tensor) and value.dtype != GENERATOR_STATE:
                        yield f"{name}/{mode}/{owner_name}.{attribute}", value


def _attributes(owner: object) -> Iterator[tuple[str, object]]:
    """An object's attributes, and those of the plain objects it holds (one level down)."""
    for attribute, value in vars(owner).items():
        if hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, torch.device, torch.Generator)):
            for inner, inner_value in vars(value).items():
                yield f"{attribute}.{inner}", inner_value
        else:
            yield attribute, value


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4))


def test_every_state_tensor_lives_on_the_configured_device(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "_announced", set())  # the choice is announced once per process
    net = model()
    tracker = SaturationTracker("run", modules=net, nosave=True, stats=["lsat", "dorm"], device="meta")
    with torch.no_grad(), pytest.warns(UserWarning, match="float32 products on meta"):
        net(torch.randn(32, 6))
        net.eval()
        net(torch.randn(8, 6))
    found = dict(state_tensors(tracker))
    assert len(found) >= 2 * 2 * 4  # 2 layers x 2 modes x (mean, comoment, sum, count...)
    assert {path: str(t.device) for path, t in found.items() if t.device.type != "meta"} == {}
    tracker.close()


def test_a_restored_state_lives_on_the_configured_device(monkeypatch) -> None:
    monkeypatch.setattr(precision_module, "_announced", set())  # the choice is announced once per process
    net = model()
    source = SaturationTracker("run", modules=net, nosave=True, stats=["lsat", "dorm"])
    with torch.no_grad():
        net(torch.randn(32, 6))
    state = source.state_dict()
    source.close()
    target = SaturationTracker("run", modules=model(), nosave=True, stats=["lsat", "dorm"], device="meta")
    with pytest.warns(UserWarning, match="float32 products on meta"):
        target.load_state_dict(state)
    found = dict(state_tensors(target))
    assert found
    assert {path: str(t.device) for path, t in found.items() if t.device.type != "meta"} == {}
    target.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_cuda_model_with_state_elsewhere_matches_numpy(ref, where) -> None:
    net = model().cuda()
    tracker = SaturationTracker("run", modules=net, nosave=True, stats=["cov", "embed", "dorm"], device=where)
    captured = []
    net[0].register_forward_hook(lambda module, inputs, output: captured.append(output.detach().cpu().double()))
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(64, 6, device="cuda"))
    found = dict(state_tensors(tracker))
    assert {path: str(t.device) for path, t in found.items() if t.device.type != where} == {}
    restored = SaturationTracker("run", modules=net, nosave=True, stats=["cov", "embed", "dorm"], device=where)
    restored.load_state_dict(tracker.state_dict())
    found = dict(state_tensors(restored))
    assert {path: str(t.device) for path, t in found.items() if t.device.type != where} == {}
    for values in (tracker.add_saturations(), restored.add_saturations()):
        expected = ref.cov(torch.cat(captured).numpy())
        np.testing.assert_allclose(values["train-covariance-matrix_0"], expected, rtol=1e-9, atol=1e-12)
        assert values["train-embedded-sample_0"].shape == (192, 2)
    tracker.close()
    restored.close()
