"""torch.compile and activation checkpointing: the tracker sees every batch exactly once."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from delve import SaturationTracker

STATS = ["cov", "lsat", "idim", "trc"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def make_net() -> Net:
    torch.manual_seed(21)
    return Net()


def batches(count: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return [torch.randn(8, 2, 6, 6, generator=generator) for _ in range(count)]


def train(model: nn.Module, data: list[torch.Tensor]) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for x in data:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    with torch.no_grad():
        model.eval()
        model(data[0])
        model.train()


def eager_values(data: list[torch.Tensor]) -> dict:
    net = make_net()
    tracker = SaturationTracker("eager", modules=net, nosave=True, stats=STATS)
    train(net, data)
    values = tracker.add_saturations()
    tracker.close()
    return values


def assert_values_close(actual: dict, expected: dict, rtol: float) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if "intrinsic-dimensionality" in key or "saturation" in key:
            # integers of well separated spectra; missing (NaN) alike where a mode saw fewer rows than features
            assert actual[key] == value or (math.isnan(actual[key]) and math.isnan(value)), key
        else:
            np.testing.assert_allclose(actual[key], value, rtol=rtol, atol=rtol, err_msg=key)


# ------------------------------------------------------------------- torch.compile
def _compiler_available(backend: str) -> bool:
    return backend != "inductor" or shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",  # Dynamo tracing and AOT autograd without a C++ toolchain: fast
        pytest.param("inductor", marks=pytest.mark.slow),  # the default backend, compiles C++ kernels
    ],
)
def test_compiled_after_attaching_feeds_the_same_statistics(backend) -> None:
    if not _compiler_available(backend):
        pytest.skip("inductor needs a C++ compiler on CPU")
    torch._dynamo.reset()
    data = batches()
    net = make_net()
    tracker = SaturationTracker("compiled", modules=net, nosave=True, stats=STATS)
    compiled = torch.compile(net, backend=backend)
    train(compiled, data)
    for name in ("conv", "fc", "head"):
        assert tracker._recording.recorders[name].modes["train"].forward_calls == len(data)
        assert tracker._recording.recorders[name].modes["eval"].forward_calls == 1
    values = tracker.add_saturations()
    tracker.close()
    assert_values_close(values, eager_values(data), rtol=1e-5)


def test_tracker_attached_to_an_already_compiled_model() -> None:
    torch._dynamo.reset()
    data = batches(3)
    net = make_net()
    compiled = torch.compile(net, backend="aot_eager")
    compiled(data[0])  # compiled and run before any hook existed
    tracker = SaturationTracker("late", modules=compiled, nosave=True, stats=STATS)
    assert tracker.layer_names == ["conv", "fc", "head"]  # no "_orig_mod" prefix
    train(compiled, data)
    values = tracker.add_saturations()
    tracker.close()
    assert_values_close(values, eager_values(data), rtol=1e-5)


def test_original_module_of_an_already_compiled_model_after_a_reset() -> None:
    """Dynamo does not see hooks added after it compiled: the documented reset makes it see them."""
    torch._dynamo.reset()
    data = batches(3)
    net = make_net()
    compiled = torch.compile(net, backend="aot_eager")
    compiled(data[0])
    tracker = SaturationTracker("late", modules=net, nosave=True, stats=STATS)
    torch.compiler.reset()
    train(compiled, data)
    values = tracker.add_saturations()
    tracker.close()
    assert_values_close(values, eager_values(data), rtol=1e-5)


def test_compiling_does_not_import_dynamo_for_eager_users() -> None:
    import subprocess
    import sys

    code = (
        "import sys, torch; from torch import nn; from delve import SaturationTracker\n"
        "m = nn.Linear(3, 2); t = SaturationTracker('x', modules=m, nosave=True)\n"
        "m(torch.randn(4, 3)); t.add_saturations()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------- activation checkpointing
class Checkpointed(nn.Module):
    """Two blocks, each recomputed in backward by torch.utils.checkpoint."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.block1 = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.Tanh())
        self.block2 = nn.Sequential(nn.Linear(8, 5), nn.Tanh())
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpoint(self.block1, x, use_reentrant=self.use_reentrant)
        x = checkpoint(self.block2, x, use_reentrant=self.use_reentrant)
        return self.head(x)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_does_not_double_count(use_reentrant, ref) -> None:
    torch.manual_seed(2)
    model = Checkpointed(use_reentrant).double()
    tracker = SaturationTracker("ckpt", modules=model, nosave=True, stats=["cov"])
    seen: dict[str, list[torch.Tensor]] = {"block1-0": [], "block2-0": []}
    model.block1[0].register_forward_hook(lambda m, i, output: seen["block1-0"].append(output.detach().clone()))
    model.block2[0].register_forward_hook(lambda m, i, output: seen["block2-0"].append(output.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 3
    for _ in range(steps):
        x = torch.randn(12, 6, dtype=torch.float64, requires_grad=use_reentrant)
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    values = tracker.add_saturations()
    tracker.close()
    for name, outputs in seen.items():
        # Every forward ran twice (forward, then recomputation in backward) with equal outputs...
        assert len(outputs) == 2 * steps
        for first, again in zip(outputs[0::2], outputs[1::2]):
            assert torch.equal(first, again)
        # ...and the tracker counted each batch once.
        np.testing.assert_allclose(
            values[f"train-covariance-matrix_{name}"], ref.cov(torch.cat(outputs[0::2]).numpy()), rtol=1e-12, atol=1e-14
        )
    assert values["train-covariance-matrix_head"].shape == (2, 2)


def test_forward_inside_a_backward_hook_is_not_recorded() -> None:
    layer = nn.Linear(3, 3)
    tracker = SaturationTracker("bw", modules=layer, nosave=True)
    x = torch.randn(4, 3, requires_grad=True)
    y = layer(x)
    calls = []

    def grad_hook(grad: torch.Tensor) -> None:
        calls.append(layer(grad.detach()))

    y.register_hook(grad_hook)
    y.sum().backward()
    assert len(calls) == 1
    assert tracker._recording.recorders["linear"].modes["train"].covariance.count == 4
    tracker.close()
