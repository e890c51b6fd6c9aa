"""The input route: a widening affine layer's covariance from its input scatter, against numpy on its outputs."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from conftest import np_cov, rel_fro
from torch import nn

from delve import SaturationTracker
from delve.engine import input_route


def captured(module: nn.Module) -> tuple[list[np.ndarray], object]:
    """An independent hook keeping the layer's output rows (a convolution's positions as rows)."""
    seen: list[np.ndarray] = []

    def keep(mod, inputs, output):
        out = output.detach().double()
        if out.ndim > 2 and isinstance(mod, nn.Conv2d):
            out = out.permute(0, 2, 3, 1)
        seen.append(out.reshape(-1, out.shape[-1]).numpy().copy())

    return seen, module.register_forward_hook(keep)


def routes(tracker: SaturationTracker) -> dict[str, str]:
    table = tracker.cost()
    return dict(zip(table["layer"], table["route"]))


class Transposed(nn.Module):
    """transformers' Conv1D, defined here: y = x @ weight + bias, weight (d_in, d_out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in**0.5)
        self.bias = nn.Parameter(torch.randn(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


@pytest.mark.parametrize("bias", [True, False])
def test_a_widening_linear_layer_takes_the_input_route_exactly(bias: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 96, bias=bias), nn.Tanh(), nn.Linear(96, 12)).double()
    seen, handle = captured(model[0])
    tracker = SaturationTracker("r", modules=model, stats=["cov", "lsat"], nosave=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n in (300, 257, 512):  # an offset of 5: the route must not lose the spread to the mean
            model(torch.randn(n, 4, 12, generator=generator, dtype=torch.float64) * 2 + 5)
    assert routes(tracker) == {"0": "input", "2": "output"}
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    rows = np.concatenate(seen)
    assert rel_fro(values["train-covariance-matrix_0"], np_cov(rows)) < 1e-12


def test_in_float32_the_route_is_exact_up_to_the_forward_pass_rounding() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 192)
    seen, handle = captured(layer)
    tracker = SaturationTracker("r", modules=layer, stats=["cov"], nosave=True)
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(1024, 24) + 3)
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    # The map is the exact float64 affine map; the float32 outputs differ from it by their own rounding.
    assert 0 < rel_fro(values["train-covariance-matrix_linear"], np_cov(np.concatenate(seen))) < 1e-6


def test_in_float32_precision_the_map_runs_in_float32_within_its_rounding() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 192).double()
    seen, handle = captured(layer)
    tracker = SaturationTracker("r", modules=layer, stats=["cov"], nosave=True, precision="float32")
    with torch.no_grad():
        for _ in range(3):
            layer(torch.randn(1024, 24, dtype=torch.float64) + 3)
    assert routes(tracker) == {"linear": "input"}
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    # Float64 outputs, float32 scatter and map: off by float32 rounding, not more.
    assert 1e-12 < rel_fro(values["train-covariance-matrix_linear"], np_cov(np.concatenate(seen))) < 1e-5


@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_convolution_maps_the_input_positions_it_reads(stride: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 48, kernel_size=1, stride=stride).double()
    seen, handle = captured(conv)
    tracker = SaturationTracker("r", modules=conv, stats=["cov"], nosave=True)
    with torch.no_grad():
        for _ in range(2):
            conv(torch.randn(8, 6, 10, 10, dtype=torch.float64) - 1)
    assert routes(tracker) == {"conv2d": "input"}
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    assert rel_fro(values["train-covariance-matrix_conv2d"], np_cov(np.concatenate(seen))) < 1e-12


def test_transformers_style_transposed_linear_layers_take_the_route(monkeypatch) -> None:
    from delve.capture import affine

    monkeypatch.setitem(affine._READERS, Transposed, affine._transposed_linear)
    import delve

    delve.register_observer(Transposed, lambda module, output, config: output, kind="linear", replace=True)
    torch.manual_seed(0)
    layer = Transposed(10, 80).double()
    seen, handle = captured(layer)
    tracker = SaturationTracker("r", modules={"proj": layer}, stats=["cov"], nosave=True)
    with torch.no_grad():
        layer(torch.randn(640, 10, dtype=torch.float64))
    assert routes(tracker) == {"proj": "input"}
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    assert rel_fro(values["train-covariance-matrix_proj"], np_cov(np.concatenate(seen))) < 1e-12


class Attention(nn.Module):
    """Query, key and value projections of one input, and an MLP's gate and up projections of another."""

    def __init__(self, d: int = 16, hidden: int = 96) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(d, hidden)
        self.gate, self.up = nn.Linear(d, hidden), nn.Linear(d, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.q(x) * self.k(x) + self.v(x)
        return mixed + self.gate(x) * self.up(x)


def test_layers_reading_one_input_share_its_scatter(monkeypatch) -> None:
    computed = []
    original = input_route.input_scatter
    monkeypatch.setattr(
        input_route, "input_scatter", lambda rows, plan: computed.append(rows.shape) or original(rows, plan)
    )
    torch.manual_seed(0)
    model = Attention().double()
    hooks = {name: captured(getattr(model, name)) for name in ("q", "k", "v", "gate", "up")}
    tracker = SaturationTracker("r", modules=model, stats=["cov"], nosave=True)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 64, 16, dtype=torch.float64))
    assert set(routes(tracker).values()) == {"input"}
    assert len(computed) == 3  # once per forward pass, for five layers
    values = tracker.add_saturations()
    tracker.close()
    for name, (seen, handle) in hooks.items():
        handle.remove()
        assert rel_fro(values[f"train-covariance-matrix_{name}"], np_cov(np.concatenate(seen))) < 1e-12, name


def test_weights_that_change_between_batches_are_mapped_batch_by_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1)).double()
    seen, handle = captured(model[0])
    tracker = SaturationTracker("r", modules=model, stats=["cov"], nosave=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(400, 8, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    assert routes(tracker)["0"] == "input"
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    assert rel_fro(values["train-covariance-matrix_0"], np_cov(np.concatenate(seen))) < 1e-12


class Dense(nn.Linear):
    """A subclass may compute something else in its own forward: never taken on the input route."""


def test_a_subclass_stays_on_the_output_route_quietly() -> None:
    layer = Dense(8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tracker = SaturationTracker("r", modules={"dense": layer}, stats=["cov"], nosave=True)
        with torch.no_grad():
            layer(torch.randn(512, 8))
    assert routes(tracker) == {"dense": "output"}
    tracker.close()


def test_an_output_replaced_by_an_earlier_hook_is_caught_once_and_falls_back() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 64).double()
    layer.register_forward_hook(lambda module, inputs, output: output.tanh())  # the user's own, registered first
    seen, handle = captured(layer)
    tracker = SaturationTracker("r", modules=layer, stats=["cov"], nosave=True)
    message = r"'linear' stays on the output route \(its output is not the affine map"
    with pytest.warns(UserWarning, match=message), torch.no_grad():
        layer(torch.randn(512, 8, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        with torch.no_grad():
            layer(torch.randn(512, 8, dtype=torch.float64))
    assert routes(tracker) == {"linear": "output"}
    assert tracker._recording.settings.costs.route_note("linear").startswith("its output is not the affine map")
    values = tracker.add_saturations()
    tracker.close()
    handle.remove()
    assert rel_fro(values["train-covariance-matrix_linear"], np_cov(np.concatenate(seen))) < 1e-12


class Sharded(torch.Tensor):
    """Stands for a weight that lives sharded outside the forward pass (not a dense tensor)."""


def test_weights_that_are_not_dense_tensors_keep_the_output_route_and_say_why() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 64).double()
    weight = layer.weight.detach().as_subclass(Sharded)
    del layer.weight
    layer.weight = weight  # a plain attribute now, as wrapped weights are
    tracker = SaturationTracker("r", modules=layer, stats=["lsat"], nosave=True)
    with pytest.warns(UserWarning, match=r"its weight is a Sharded, not a dense tensor"), torch.no_grad():
        layer(torch.randn(512, 8, dtype=torch.float64))
    assert routes(tracker) == {"linear": "output"}
    tracker.close()


def test_a_checkpoint_mid_epoch_continues_the_input_route_exactly() -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [torch.randn(300, 10, generator=generator, dtype=torch.float64) for _ in range(6)]

    def fresh():
        torch.manual_seed(0)
        layer = nn.Linear(10, 90).double()
        return layer, SaturationTracker("r", modules=layer, stats=["cov"], nosave=True)

    layer, straight = fresh()
    with torch.no_grad():
        for index, batch in enumerate(batches):
            if index == 3:
                buffer = io.BytesIO()
                torch.save(straight.state_dict(), buffer)
            layer(batch)
    expected = straight.add_saturations()["train-covariance-matrix_linear"]
    layer, resumed = fresh()
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        for batch in batches[3:]:
            layer(batch)
    assert routes(resumed) == {"linear": "input"}
    np.testing.assert_allclose(resumed.add_saturations()["train-covariance-matrix_linear"], expected, rtol=1e-12)
    straight.close()
    resumed.close()


def test_under_bf16_autocast_the_route_tracks_the_full_precision_affine_map() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 128)
    outputs, inputs = [], []
    def keep(module, args, output) -> None:
        inputs.append(args[0])
        outputs.append(output.detach())

    layer.register_forward_hook(keep)
    tracker = SaturationTracker("r", modules=layer, stats=["cov"], nosave=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            layer(torch.randn(512, 16))
    assert all(out.dtype == torch.bfloat16 for out in outputs)
    values = tracker.add_saturations()
    tracker.close()
    exact = (torch.cat(inputs).double() @ layer.weight.double().T + layer.bias.double()).detach()
    # The full-precision map, not the bf16 outputs (those differ from it by bf16 rounding, about 1e-2).
    assert rel_fro(values["train-covariance-matrix_linear"], np_cov(exact.numpy())) < 1e-12
    assert rel_fro(values["train-covariance-matrix_linear"], np_cov(torch.cat(outputs).double().numpy())) > 1e-4
