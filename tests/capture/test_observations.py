"""Observation rows of every module kind and method against plain numpy / torch reshapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import np_cov
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from delve import ObservationConfig, SaturationTracker, register_observer
from delve.capture import observation as obs
from delve.capture.layer_kinds import shrink_feature_map
from delve.capture.observation import UnsupportedOutputError, observe


def rows_of(module: nn.Module, output, **config) -> np.ndarray:
    """What delve records for ``output``, as an (n, d) numpy array."""
    rows = observe(module, output, ObservationConfig(**config), "layer")
    return rows.reshape(-1, rows.shape[-1]).detach().numpy()


@pytest.fixture
def clean_registry():
    """Tests that register observers leave the registry as they found it."""
    saved = dict(obs._REGISTRY)
    yield
    obs._REGISTRY.clear()
    obs._REGISTRY.update(saved)


# ------------------------------------------------------------------- dense
def test_linear_2d_output_rows_are_samples():
    layer = nn.Linear(5, 3)
    out = layer(torch.randn(7, 5))
    np.testing.assert_array_equal(rows_of(layer, out), out.detach().numpy())


def test_linear_3d_output_gives_batch_times_tokens_rows():
    layer = nn.Linear(6, 4)
    out = layer(torch.randn(3, 5, 6))
    got = rows_of(layer, out)
    assert got.shape == (15, 4)
    np.testing.assert_array_equal(got, out.detach().numpy().reshape(15, 4))


def test_linear_unbatched_output_is_one_sample():
    layer = nn.Linear(6, 4)
    out = layer(torch.randn(6))
    np.testing.assert_array_equal(rows_of(layer, out), out.detach().numpy()[None])


def test_linear_subclass_uses_the_base_observer():
    class Scaled(nn.Linear):
        pass

    layer = Scaled(3, 2)
    out = layer(torch.randn(4, 3))
    np.testing.assert_array_equal(rows_of(layer, out), out.detach().numpy())


# -------------------------------------------------------------------- conv
def np_conv_rows(out: np.ndarray, method: str) -> np.ndarray:
    """Reference reshapes of a (N, C, *spatial) map."""
    n, c = out.shape[:2]
    maps = out.reshape(n, c, -1)
    if method == "channelwise":
        return np.moveaxis(out, 1, -1).reshape(-1, c)
    if method == "mean":
        return maps.mean(-1)
    if method == "max":
        return maps.max(-1)
    if method == "median":
        # torch's median is the lower of the two middle values for even counts.
        return np.quantile(maps, 0.5, axis=-1, method="lower")
    return out.reshape(n, -1)


CONVS = {
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), (2, 3, 9)),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), (2, 2, 4, 5, 3)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), (2, 3, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 3, 4)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), (2, 2, 3, 2, 3)),
}


@pytest.mark.parametrize("method", obs.CONV_METHODS)
@pytest.mark.parametrize("kind", sorted(CONVS))
def test_conv_methods_match_numpy(kind, method):
    make, shape = CONVS[kind]
    layer = make()
    out = layer(torch.randn(shape))
    reference = np_conv_rows(out.detach().numpy(), method)
    got = rows_of(layer, out, conv_method=method)
    n, c = out.shape[:2]
    spatial = int(np.prod(out.shape[2:]))
    expected_shape = {"channelwise": (n * spatial, c), "flatten": (n, c * spatial)}.get(method, (n, c))
    assert got.shape == expected_shape
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_median_of_an_odd_number_of_positions_is_the_numpy_median():
    layer = nn.Conv2d(2, 3, 1)
    out = layer(torch.randn(4, 2, 3, 3))  # 9 positions
    expected = np.median(out.detach().numpy().reshape(4, 3, -1), axis=-1)
    np.testing.assert_allclose(rows_of(layer, out, conv_method="median"), expected, rtol=1e-6)


def test_unbatched_conv_output_is_one_image():
    layer = nn.Conv2d(3, 4, 3)
    out = layer(torch.randn(3, 6, 5))  # (C, H, W): no batch dimension
    expected = np_conv_rows(out.detach().numpy()[None], "channelwise")
    np.testing.assert_allclose(rows_of(layer, out), expected, rtol=1e-6)
    assert rows_of(layer, out, conv_method="mean").shape == (1, 4)


def test_channelwise_covariance_equals_numpy_on_positions():
    layer = nn.Conv2d(3, 5, 3)
    out = layer(torch.randn(6, 3, 8, 8))
    rows = observe(layer, out, ObservationConfig(), "conv")
    from delve import TorchCovarianceMatrix

    acc = TorchCovarianceMatrix()
    acc.update_rows(rows)
    reference = np_cov(np.moveaxis(out.detach().numpy(), 1, -1).reshape(-1, 5))
    np.testing.assert_allclose(acc.fix().numpy(), reference, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------- interpolation
def test_area_shrink_keeps_aspect_ratio_and_equals_block_means():
    layer = nn.Conv2d(2, 3, 1)
    out = layer(torch.randn(2, 2, 64, 32))
    got = observe(layer, out, ObservationConfig(interpolation_strategy="area", interpolation_downsampling=16), "c")
    # (64, 32) -> (16, 8): both sides divided by 4.
    blocks = out.detach().numpy().reshape(2, 3, 16, 4, 8, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(got.reshape(-1, 3).detach().numpy(), np_conv_rows(blocks, "channelwise"), rtol=1e-5)


def test_nearest_shrink_takes_every_kth_position():
    layer = nn.Conv1d(2, 3, 1)
    out = layer(torch.randn(2, 2, 40))
    config = {"interpolation_strategy": "nearest", "interpolation_downsampling": 10, "conv_method": "flatten"}
    expected = out.detach().numpy()[:, :, ::4].reshape(2, -1)
    np.testing.assert_array_equal(rows_of(layer, out, **config), expected)


def test_shrink_never_upsamples():
    small = torch.randn(1, 3, 8, 4)
    assert shrink_feature_map(small, "bilinear", 32) is small
    layer = nn.Conv2d(3, 3, 1)
    out = layer(small)
    got = rows_of(layer, out, interpolation_strategy="bilinear", interpolation_downsampling=32)
    np.testing.assert_array_equal(got, np_conv_rows(out.detach().numpy(), "channelwise"))


@pytest.mark.parametrize(
    ("shape", "strategy", "largest", "expected"),
    [
        ((1, 2, 100), "linear", 25, (1, 2, 25)),
        ((1, 2, 100), "bilinear", 25, (1, 2, 25)),  # the linear family follows the map's dimensionality
        ((1, 2, 30, 90), "bilinear", 30, (1, 2, 10, 30)),
        ((1, 2, 30, 90), "bicubic", 9, (1, 2, 3, 9)),
        ((1, 2, 16, 8, 32), "trilinear", 8, (1, 2, 4, 2, 8)),
        ((1, 2, 16, 8, 32), "nearest-exact", 8, (1, 2, 4, 2, 8)),
        ((1, 2, 64, 3), "area", 16, (1, 2, 16, 1)),  # a side never shrinks below 1
    ],
)
def test_shrink_shapes(shape, strategy, largest, expected):
    assert tuple(shrink_feature_map(torch.randn(shape), strategy, largest).shape) == expected


def test_bicubic_on_a_3d_map_is_rejected():
    with pytest.raises(ValueError, match="bicubic"):
        shrink_feature_map(torch.randn(1, 2, 40, 40, 40), "bicubic", 8)


# --------------------------------------------------------------- recurrent
RECURRENT = {"RNN": nn.RNN, "LSTM": nn.LSTM, "GRU": nn.GRU}


@pytest.mark.parametrize("method", obs.TIMESERIES_METHODS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_rows_match_reference(kind, batch_first, bidirectional, method):
    hidden, dirs = 5, 2 if bidirectional else 1
    layer = RECURRENT[kind](3, hidden, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(4, 6, 3) if batch_first else torch.randn(6, 4, 3)  # 4 sequences of 6 steps
    output = layer(x)
    sequence = output[0].detach().numpy()
    if method == "timestepwise":
        expected = sequence.reshape(-1, hidden * dirs)
    else:
        expected = sequence[:, -1] if batch_first else sequence[-1]
    got = rows_of(layer, output, timeseries_method=method)
    assert got.shape == ((24 if method == "timestepwise" else 4), hidden * dirs)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_last_timestep_is_the_output_after_the_whole_sequence(kind):
    """Independent of layout: running each sequence alone gives the same last output."""
    layer = RECURRENT[kind](3, 4, batch_first=True)
    x = torch.randn(3, 5, 3)
    got = rows_of(layer, layer(x))
    for i in range(3):
        alone = layer(x[i])[0][-1].detach().numpy()
        np.testing.assert_allclose(got[i], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", obs.TIMESERIES_METHODS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_recurrent_input(method, bidirectional):
    layer = nn.LSTM(3, 4, bidirectional=bidirectional)
    output = layer(torch.randn(7, 3))  # (T, features), no batch
    sequence = output[0].detach().numpy()
    expected = sequence if method == "timestepwise" else sequence[-1:]
    np.testing.assert_array_equal(rows_of(layer, output, timeseries_method=method), expected)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_packed_sequences_use_each_sequence_own_end(kind, bidirectional):
    layer = RECURRENT[kind](3, 4, batch_first=True, bidirectional=bidirectional)
    lengths = [5, 2, 4]
    x = torch.randn(3, 5, 3)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    output = layer(packed)
    alone = [layer(x[i, :length])[0].detach().numpy() for i, length in enumerate(lengths)]

    last = rows_of(layer, output)
    assert last.shape == (3, 4 * (2 if bidirectional else 1))
    for i in range(3):
        np.testing.assert_allclose(last[i], alone[i][-1], rtol=1e-5, atol=1e-6)

    steps = rows_of(layer, output, timeseries_method="timestepwise")
    everything = np.concatenate(alone)
    assert steps.shape == everything.shape  # padding never becomes a sample
    np.testing.assert_allclose(np_cov(steps), np_cov(everything), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sort(steps, axis=0), np.sort(everything, axis=0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- attention
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_tokens_are_samples(batch_first, need_weights):
    layer = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    x = torch.randn(3, 5, 8)
    output = layer(x, x, x, need_weights=need_weights)
    expected = output[0].detach().numpy().reshape(-1, 8)
    got = rows_of(layer, output)
    assert got.shape == (15, 8)
    np.testing.assert_array_equal(got, expected)


# -------------------------------------------------------------- unsupported
def test_unregistered_module_raises_naming_layer_and_fix():
    with pytest.raises(UnsupportedOutputError) as error:
        observe(nn.ReLU(), torch.zeros(2, 3), ObservationConfig(), "block-act")
    message = str(error.value)
    assert "'block-act'" in message and "ReLU" in message and "register_observer" in message


class DictLinear(nn.Linear):
    def forward(self, x):
        return {"out": super().forward(x)}


class IndexLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x).argmax(-1, keepdim=True)


@pytest.mark.parametrize("kind", [DictLinear, IndexLinear])
def test_unreadable_output_raises_naming_layer_and_fix(kind):
    layer = kind(3, 2)
    with pytest.raises(UnsupportedOutputError) as error:
        observe(layer, layer(torch.randn(4, 3)), ObservationConfig(), "head")
    message = str(error.value)
    assert "'head'" in message and "register_observer" in message


def test_unreadable_output_fails_at_first_forward_through_tracker():
    model = nn.Sequential(nn.Linear(3, 3), DictLinear(3, 2))
    tracker = SaturationTracker("unused", modules=model, nosave=True)
    try:
        with pytest.raises(UnsupportedOutputError, match=r"'1'.*register_observer"):
            model[1](model[0](torch.randn(4, 3)))
    finally:
        tracker.close()


def test_unsupported_is_a_type_error():
    assert issubclass(UnsupportedOutputError, TypeError)


# ----------------------------------------------------------- custom kinds
class Pair(nn.Module):
    """A module that returns a dict: delve cannot read it without help."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return {"features": x @ self.weight.t(), "aux": x.sum()}


def test_register_observer_for_a_custom_module(clean_registry, ref):
    model = nn.Sequential(Pair())
    with pytest.raises(ValueError, match="nothing to track"):
        SaturationTracker("unused", modules=model, nosave=True)
    register_observer(Pair, lambda module, output, config: output["features"])
    captured = []
    model[0].register_forward_hook(lambda m, i, o: captured.append(o["features"].detach().numpy()))
    tracker = SaturationTracker("unused", modules=model, nosave=True, stats=["idim", "trc"])
    for _ in range(3):
        model(torch.randn(10, 3))
    values = tracker.add_saturations()
    tracker.close()
    expected = ref.stats(np.concatenate(captured))
    assert values["train-intrinsic-dimensionality_0"] == expected["intrinsic-dimensionality"]
    assert values["train-covariance-trace_0"] == pytest.approx(expected["covariance-trace"], rel=1e-10)


def test_register_observer_rejects_bad_arguments(clean_registry):
    with pytest.raises(ValueError, match=r"nn\.Module subclass"):
        register_observer(int, lambda *a: None)
    with pytest.raises(ValueError, match="callable"):
        register_observer(Pair, "not callable")


# -------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("argument", "value", "accepted"),
    [
        ("conv_method", "avg", "channelwise"),
        ("timeseries_method", "first", "last_timestep"),
        ("interpolation_strategy", "cubic", "bilinear"),
        ("interpolation_downsampling", 0, "positive"),
    ],
)
def test_config_rejects_unknown_values_naming_accepted_ones(argument, value, accepted):
    with pytest.raises(ValueError, match=accepted):
        ObservationConfig(**{argument: value})


def test_numpy_integer_sizes_are_accepted_and_act_like_ints() -> None:
    import numpy as np

    out = torch.randn(2, 3, 40, 20)
    layer = nn.Conv2d(3, 3, 1)
    as_numpy = ObservationConfig(interpolation_strategy="nearest", interpolation_downsampling=np.int64(10))
    as_int = ObservationConfig(interpolation_strategy="nearest", interpolation_downsampling=10)
    got = observe(layer, out, as_numpy, "c")
    assert got.shape == (2, 50, 3)  # 40x20 shrunk to 10x5, every position a sample
    torch.testing.assert_close(got, observe(layer, out, as_int, "c"), rtol=0, atol=0)
