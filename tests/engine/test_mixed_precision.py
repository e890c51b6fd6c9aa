"""float16 / bfloat16 outputs (torch.autocast, half models) accumulate exactly in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cpu_half import needs_cpu_half_autocast, needs_cpu_half_matmul
from torch import nn

from delve import SaturationTracker, TorchCovarianceMatrix
from delve.common.torch_features import autocast_enabled

HALF = [torch.float16, torch.bfloat16]


class Capture:
    """Keeps every output of a module, upcast to float64, as the reference sees it."""

    def __init__(self, module: nn.Module, view=lambda out: out) -> None:
        self.rows: list[torch.Tensor] = []
        self.view = view
        self.dtypes: set[torch.dtype] = set()
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.dtypes.add(output.dtype)
        self.rows.append(self.view(output.detach()).double().reshape(-1, self.view(output).shape[-1]))

    def cat(self) -> np.ndarray:
        return torch.cat(self.rows).numpy()


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, marks=needs_cpu_half_autocast), torch.bfloat16])
def test_autocast_outputs_accumulate_like_float64(dtype, ref) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    tracker = SaturationTracker("amp", modules=model, nosave=True, stats=["cov", "lsat"])
    conv = Capture(model[0], view=lambda out: out.flatten(2).transpose(1, 2))
    linear = Capture(model[3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(4):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = model(torch.randn(16, 3, 8, 8)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
    assert conv.dtypes == linear.dtypes == {dtype}
    values = tracker.add_saturations()
    np.testing.assert_allclose(values["train-covariance-matrix_0"], ref.cov(conv.cat()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values["train-covariance-matrix_3"], ref.cov(linear.cat()), rtol=1e-12, atol=1e-12)
    assert values["train-saturation_3"] == ref.saturation(ref.cov(linear.cat()), 0.99)
    tracker.close()


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, marks=needs_cpu_half_matmul), torch.bfloat16])
def test_large_half_values_do_not_overflow(dtype, precision, ref) -> None:
    """Values around 1e4 square to 1e8, beyond float16's 65504: products must be upcast first."""
    layer = nn.Linear(5, 5, bias=True).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(5))
        layer.bias.fill_(1e4)
    tracker = SaturationTracker("big", modules=layer, nosave=True, stats=["cov", "trc"], precision=precision)
    seen = Capture(layer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(6):
            out = layer((torch.randn(64, 5, generator=generator) * 3000).to(dtype))
            assert out.abs().max() > 1e4 and torch.isfinite(out).all()
    values = tracker.add_saturations()
    assert "train-nonfinite-batches_linear" not in values
    expected = ref.cov(seen.cat())
    assert expected.max() > 1e6  # far beyond what float16 holds
    rtol = 1e-12 if precision == "float64" else 1e-5
    np.testing.assert_allclose(
        values["train-covariance-matrix_linear"], expected, rtol=rtol, atol=rtol * expected.max()
    )
    np.testing.assert_allclose(values["train-covariance-trace_linear"], np.trace(expected), rtol=rtol)


@pytest.mark.parametrize("dtype", HALF)
def test_covariance_update_with_half_batches(dtype, ref) -> None:
    accumulator = TorchCovarianceMatrix()
    batches = [(torch.randn(100, 4) * 2e3 + 1e4).to(dtype) for _ in range(5)]
    for batch in batches:
        accumulator.update(batch)
    expected = ref.cov(torch.cat(batches).double().numpy())
    np.testing.assert_allclose(accumulator.fix().numpy(), expected, rtol=1e-12, atol=1e-12 * expected.max())
    np.testing.assert_allclose(accumulator.mean.numpy(), torch.cat(batches).double().mean(0).numpy(), rtol=1e-14)


def test_autocast_state_is_unchanged_by_the_hook() -> None:
    layer = nn.Linear(4, 4)
    tracker = SaturationTracker("amp", modules=layer, nosave=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(8, 4))
        assert autocast_enabled("cpu")
        assert layer(out.float()).dtype == torch.bfloat16  # autocast still on after the hook ran
    assert tracker._recording.recorders["linear"].modes["train"].covariance.count == 16
    tracker.close()
