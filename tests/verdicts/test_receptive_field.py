"""Receptive fields against hand-computed values, one architecture or layer kind at a time.

The arithmetic is in the comments: ``rf`` is the field, ``j`` the jump (input
pixels between neighbouring positions), ``rf_out = rf_in + (d (k - 1)) j_in``
and ``j_out = j_in s``.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import delve
from delve.capture.discovery import discover_layers
from delve.verdicts import receptive_field

pytestmark = pytest.mark.filterwarnings("error")  # the walk must not warn, whatever fx does


def fields(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[object, object]]:
    frame = receptive_field(model, shape)
    assert (frame["note"] == "").all(), frame["note"].tolist()
    return {row.layer: (row.rf_min, row.rf_max) for row in frame.itertuples()}


def square(low: int, high: int | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    high = low if high is None else high
    return (low, low), (high, high)


def conv_names(model: nn.Module) -> list[str]:
    return [layer.name for layer in discover_layers(model) if layer.kind == "conv"]


# ----------------------------------------------------------------------------- models
def plain_stack(layers: int = 12) -> nn.Sequential:
    blocks = [[nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()] for _ in range(layers)]
    return nn.Sequential(*[module for block in blocks for module in block])


class BasicBlock(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1:
            shortcut = nn.Conv2d(channels, channels, 1, stride, bias=False)
            self.downsample = nn.Sequential(shortcut, nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class Bottleneck(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 2, 1)
        self.conv2 = nn.Conv2d(2, 2, 3, stride, 1)
        self.conv3 = nn.Conv2d(2, channels, 1)
        self.downsample = nn.Conv2d(channels, channels, 1, stride) if stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = block(4, 2)
        self.layer2 = block(4, 1)
        self.head = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(self.stem(x))))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, 2, 1)
        self.expand = nn.Conv2d(2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(self.pool(x)))))


class MobileBlock(nn.Module):
    """Stem, then an inverted residual: expand 1x1, depthwise 3x3, squeeze-excitation, project 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.se = SqueezeExcitation(16)
        self.project = nn.Conv2d(16, 8, 1)
        self.depthwise2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise2 = nn.Conv2d(8, 8, 1)
        self.last = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(F.relu6(self.depthwise(F.relu6(self.expand(x))))))
        return self.last(self.pointwise2(self.depthwise2(x)))


class UNet(nn.Module):
    def __init__(self, up: nn.Module) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 4, 3, padding=1)
        self.enc2 = nn.Conv2d(4, 4, 3, padding=1)
        self.mid1 = nn.Conv2d(4, 4, 3, padding=1)
        self.mid2 = nn.Conv2d(4, 4, 3, padding=1)
        self.up = up
        self.dec1 = nn.Conv2d(8, 4, 3, padding=1)
        self.dec2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc2(F.relu(self.enc1(x)))
        deep = self.mid2(F.relu(self.mid1(F.max_pool2d(skip, 2))))
        return self.dec2(F.relu(self.dec1(torch.cat([self.up(deep), skip], dim=1))))


# ------------------------------------------------------------------------------ frame
def test_columns_types_and_top_level_export() -> None:
    assert delve.receptive_field is receptive_field
    assert "receptive_field" in delve.__all__
    frame = receptive_field(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), (1, 3, 16, 16))
    assert list(frame.columns) == ["layer", "rf_min", "rf_max", "input_size", "beyond_input", "note"]
    assert frame["layer"].tolist() == ["0", "2"]
    assert frame["rf_min"].tolist() == [(3, 3), (5, 5)]
    assert frame["input_size"].tolist() == [(16, 16), (16, 16)]
    assert frame["beyond_input"].tolist() == [False, False]
    assert str(frame["beyond_input"].dtype) == "boolean"
    assert frame["note"].tolist() == ["", ""]


def test_a_model_without_convolutions_gives_no_rows() -> None:
    frame = receptive_field(nn.Sequential(nn.Linear(3, 3)), (1, 1, 3))
    assert frame.empty
    assert list(frame.columns) == ["layer", "rf_min", "rf_max", "input_size", "beyond_input", "note"]


def test_names_are_the_trackers() -> None:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3)))
    model.classifier = nn.Linear(2, 2)
    model.forward = lambda x: model.classifier(model.features(x).mean((2, 3)))
    frame = receptive_field(model, (1, 1, 9, 9))
    assert frame["layer"].tolist() == conv_names(model) == ["features-0", "features-1-1"]
    single = nn.Conv2d(1, 2, 3)
    assert receptive_field(single, (1, 1, 9, 9))["layer"].tolist() == conv_names(single) == ["conv2d"]
    for model in (ResNet(BasicBlock), MobileBlock(), UNet(nn.Upsample(scale_factor=2))):
        assert receptive_field(model, (1, 3 if not isinstance(model, UNet) else 1, 16, 16))["layer"].tolist() == (
            conv_names(model)
        )


# ---------------------------------------------------------------------- architectures
def test_plain_stack_grows_by_two_per_layer_and_passes_an_8x8_input_from_layer_4() -> None:
    frame = receptive_field(plain_stack(), (1, 3, 8, 8))
    for layer, row in enumerate(frame.itertuples(), start=1):
        assert row.rf_min == row.rf_max == (1 + 2 * layer,) * 2  # 3, 5, 7, 9, ...
    # 1 + 2L > 8 from L = 4 (9 pixels) on.
    assert frame["beyond_input"].tolist() == [False] * 3 + [True] * 9


def test_vgg_style_with_max_pools() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 3, j 1
        nn.Conv2d(4, 4, 3, padding=1),  # 5
        nn.MaxPool2d(2),  # 5 + 1 = 6, j 2
        nn.Conv2d(4, 4, 3, padding=1),  # 6 + 2*2 = 10
        nn.Conv2d(4, 4, 3, padding=1),  # 14
        nn.MaxPool2d(2),  # 14 + 1*2 = 16, j 4
        nn.Conv2d(4, 4, 3, padding=1),  # 16 + 2*4 = 24
        nn.Conv2d(4, 4, 3, padding=1),  # 32
        nn.MaxPool2d(2, 2),  # 32 + 1*4 = 36, j 8
        nn.Conv2d(4, 4, 3, padding=1),  # 36 + 2*8 = 52
    )
    frame = receptive_field(model, (1, 3, 32, 32))
    assert [row[0] for row in frame["rf_min"]] == [3, 5, 10, 14, 24, 32, 52]
    assert frame["rf_max"].tolist() == frame["rf_min"].tolist()
    assert frame["beyond_input"].tolist() == [False] * 6 + [True]  # 32 is not beyond 32; 52 is


def test_resnet_basic_blocks_with_a_strided_1x1_shortcut() -> None:
    assert fields(ResNet(BasicBlock), (1, 3, 32, 32)) == {
        "stem": square(3),  # j 1
        "layer1-conv1": square(5),  # 3 + 2, j 2
        "layer1-conv2": square(9),  # 5 + 2*2
        "layer1-downsample-0": square(3),  # 1x1: 3, j 2; the sum holds paths of 9 and 3
        "layer2-conv1": square(7, 13),  # 3 + 2*2 and 9 + 2*2
        "layer2-conv2": square(11, 17),  # the identity adds 3 and 9: min 3, max 17
        "head": square(7, 21),  # 3 + 4 and 17 + 4
    }


def test_resnet_bottleneck_blocks() -> None:
    assert fields(ResNet(Bottleneck), (1, 3, 32, 32)) == {
        "stem": square(3),
        "layer1-conv1": square(3),  # 1x1
        "layer1-conv2": square(5),  # 3 + 2, j 2
        "layer1-conv3": square(5),
        "layer1-downsample": square(3),  # 1x1 stride 2: the sum holds 5 and 3
        "layer2-conv1": square(3, 5),
        "layer2-conv2": square(7, 9),  # + 2*2
        "layer2-conv3": square(7, 9),  # the identity adds 3 and 5: min 3, max 9
        "head": square(7, 13),
    }


def test_depthwise_separable_with_squeeze_excitation() -> None:
    assert fields(MobileBlock(), (1, 3, 16, 16)) == {
        "stem": square(3),  # stride 2: j 2, an 8x8 map
        "expand": square(3),
        "depthwise": square(7),  # 3 + 2*2 (groups do not change the field)
        # Global pooling over the 8 positions: 7 + (8 - 1)*2 = 21, the whole input and its padding.
        "se-reduce": square(21),
        "se-expand": square(21),
        # The gate multiplies every position: max becomes the gate's 21, min follows the main path.
        "project": square(7, 21),
        # The residual adds the stem's 3: min 3 + 2*2 = 7; the gate's 21 stays 21 (it is one position).
        "depthwise2": square(7, 21),
        "pointwise2": square(7, 21),
        "last": square(11, 21),  # 7 + 2*2 = 11
    }


def test_squeeze_excitation_through_a_mean_and_linear_layers() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
            self.after = nn.Conv2d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
            return self.after(x * gate.view(x.shape[0], -1, 1, 1))

    # conv: 3 on an 8x8 map of a 10x10 input; the mean: 3 + 7 = 10; after: min 3 + 2 = 5, max 10.
    frame = receptive_field(Gated(), (1, 3, 10, 10))
    assert frame["rf_min"].tolist() == [(3, 3), (5, 5)]
    assert frame["rf_max"].tolist() == [(3, 3), (10, 10)]


@pytest.mark.parametrize(
    ("up", "dec1", "dec2"),
    [
        # Nearest 2x: output o reads mid2 position floor(o/2). dec1's 3 neighbours read 2 mid2 positions
        # (14 + 1*2 = 16), dec2's 5 read 3 (14 + 2*2 = 18). The skip path: 5 + 2 = 7, then 9.
        (nn.Upsample(scale_factor=2), (7, 16), (9, 18)),
        # A 2x2 stride-2 transposed convolution reads like nearest 2x.
        (nn.ConvTranspose2d(4, 4, 2, 2), (7, 16), (9, 18)),
        # Bilinear 2x: output o reads the two mid2 positions around o/2 - 1/4, so 3 neighbours read 3
        # (14 + 2*2 = 18) and 5 read 4 (14 + 3*2 = 20).
        (nn.Upsample(scale_factor=2, mode="bilinear"), (7, 18), (9, 20)),
    ],
)
def test_unet_upsampling_and_concatenation(up: nn.Module, dec1: tuple[int, int], dec2: tuple[int, int]) -> None:
    found = fields(UNet(up), (1, 1, 16, 16))
    assert found["enc1"] == square(3)
    assert found["enc2"] == square(5)
    assert found["mid1"] == square(10)  # pool: 5 + 1 = 6, j 2; 6 + 2*2
    assert found["mid2"] == square(14)
    if "up" in found:
        assert found["up"] == square(14)  # every output reads one input position
    assert found["dec1"] == square(*dec1)
    assert found["dec2"] == square(*dec2)


# ------------------------------------------------------------------------ layer kinds
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_padding_does_not_change_the_field(padding: int) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=padding), nn.Conv2d(2, 2, 3, padding=padding))
    assert fields(model, (1, 1, 12, 12)) == {"0": square(3), "1": square(5)}


def test_padding_layers_and_crops_do_not_change_the_field() -> None:
    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv2d(1, 2, 3)
            self.pad = nn.ReflectionPad2d(2)
            self.second = nn.Conv2d(2, 2, 3)
            self.third = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.second(self.pad(self.first(x)))  # 3, then 5
            x = F.pad(x, (1, 1, 1, 1))[:, :, 1:-1, 2:]  # a shift and a crop: still 5
            return self.third(x)  # 7

    assert fields(Padded(), (1, 1, 16, 16)) == {"first": square(3), "second": square(5), "third": square(7)}


def test_dilation() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, dilation=2, padding=2),  # k_eff = 2*(3-1)+1 = 5
        nn.Conv2d(2, 2, 3, dilation=4, padding=4),  # k_eff = 9: 5 + 8 = 13
        nn.Conv2d(2, 2, 3, padding=1),  # 15
    )
    assert fields(model, (1, 1, 32, 32)) == {"0": square(5), "1": square(13), "2": square(15)}


def test_stride() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1),  # 3, j 2
        nn.Conv2d(2, 2, 3, padding=1),  # 3 + 2*2 = 7
        nn.Conv2d(2, 2, 3, stride=2, padding=1),  # 7 + 2*2 = 11, j 4
        nn.Conv2d(2, 2, 3, padding=1),  # 11 + 2*4 = 19
    )
    assert fields(model, (1, 1, 32, 32)) == {"0": square(3), "1": square(7), "2": square(11), "3": square(19)}


def test_average_pooling_with_its_own_stride_and_strided_slicing() -> None:
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv2d(1, 2, 3)
            self.second = nn.Conv2d(2, 2, 1)
            self.third = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.avg_pool2d(self.first(x), 3, stride=1)  # 3 + 2 = 5, j 1
            x = self.second(x[..., ::2, ::2])  # every other position: 5, j 2
            return self.third(x)  # 5 + 2*2 = 9

    assert fields(Pooled(), (1, 1, 20, 20)) == {"first": square(3), "second": square(5), "third": square(9)}


def test_residual_addition_and_concatenation_take_min_and_max_over_paths() -> None:
    class TwoPaths(nn.Module):
        def __init__(self, join: str) -> None:
            super().__init__()
            self.narrow = nn.Conv2d(1, 2, 1)  # 1
            self.wide = nn.Conv2d(1, 2, 5, padding=2)  # 5
            self.after = nn.Conv2d(2 if join == "add" else 4, 2, 3, padding=1)  # 1 + 2 = 3 and 5 + 2 = 7
            self.join = join

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.narrow(x), self.wide(x)
            return self.after(a + b if self.join == "add" else torch.cat([a, b], 1))

    for join in ("add", "cat"):
        assert fields(TwoPaths(join), (1, 1, 16, 16))["after"] == square(3, 7)


def test_global_pooling_reads_the_whole_input() -> None:
    # 3x3 without padding: 6 positions of field 3, j 1; global pooling: 3 + (6 - 1) = 8, the whole input.
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(2, 3)
    )
    frame = receptive_field(model, (1, 1, 8, 8))
    assert frame["rf_min"].tolist() == [(3, 3), (8, 8)]
    assert frame["beyond_input"].tolist() == [False, False]
    # With padding the 8 positions' fields reach one pixel out on each side: 3 + 7 = 10.
    padded = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveMaxPool2d((1, 1)), nn.Conv2d(2, 2, 1))
    assert fields(padded, (1, 1, 8, 8))["2"] == square(10)


def test_adaptive_pooling_with_uneven_bins() -> None:
    # 5 positions into 3 bins: floor(o*5/3) .. ceil((o+1)*5/3) - 1 = 0..1, 1..3, 3..4: 2, 3 and 2 pixels.
    model = nn.Sequential(nn.Conv1d(1, 1, 1), nn.AdaptiveAvgPool1d(3), nn.Conv1d(1, 1, 1))
    assert fields(model, (1, 1, 5))["2"] == (2, 3)
    # 8 into 4 is an ordinary 2-pooling: 1 + 1 = 2, j 2; then a 3-kernel: 2 + 2*2 = 6.
    model = nn.Sequential(nn.Conv1d(1, 1, 1), nn.AdaptiveAvgPool1d(4), nn.Conv1d(1, 1, 3, padding=1))
    assert fields(model, (1, 1, 8))["2"] == (6, 6)


@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        # nearest: o reads floor(o/3): one pixel.
        ("nearest", {}, (1, 1)),
        ("nearest-exact", {}, (1, 1)),
        # linear: source (o + 1/2)/3 - 1/2 = (o - 1)/3; on a pixel when o = 1 (mod 3), else between two.
        ("linear", {}, (1, 2)),
        # align_corners, 10 -> 30 positions: source o * 9/29; on a pixel only when 29 divides o.
        ("linear", {"align_corners": True}, (1, 2)),
    ],
)
def test_interpolation_reads_per_mode(mode: str, options: dict, expected: tuple[int, int]) -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.before, self.after = nn.Conv1d(1, 1, 1), nn.Conv1d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.after(F.interpolate(self.before(x), scale_factor=3, mode=mode, **options))

    assert fields(Up(), (1, 1, 10))["after"] == expected


def test_upsampling_fields_depend_on_where_the_window_falls() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),  # 3, j 1
        nn.Upsample(scale_factor=2),  # o reads floor(o/2): still 3, j 1/2
        nn.Conv2d(2, 2, 2),  # 2 neighbours read 1 or 2 positions: 3 or 3 + 1 = 4
        nn.Conv2d(2, 2, 2),  # 3 neighbours always read 2 positions: 4
    )
    assert fields(model, (1, 1, 12, 12)) == {"0": square(3), "2": square(3, 4), "3": square(4)}


def test_bicubic_reads_four_pixels_and_linear_two() -> None:
    class Up(nn.Module):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.before, self.after, self.mode = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1), mode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.after(F.interpolate(self.before(x), scale_factor=2, mode=self.mode))

    # 2x: the source o/2 - 1/4 never falls on a pixel, so every output reads 4 (bicubic) or 2 (bilinear) pixels.
    assert fields(Up("bicubic"), (1, 1, 8, 8))["after"] == square(4)
    assert fields(Up("bilinear"), (1, 1, 8, 8))["after"] == square(2)


def test_pixel_shuffle_reads_like_nearest_upsampling() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2), nn.Conv2d(1, 1, 2))  # 3, then 3 or 4
    assert fields(model, (1, 1, 10, 10))["2"] == square(3, 4)


def test_transposed_convolution_with_holes_has_a_note() -> None:
    # Kernel 1, stride 2: odd outputs read no input, so no field is derived after it.
    model = nn.Sequential(nn.Conv1d(1, 1, 3), nn.ConvTranspose1d(1, 1, 1, stride=2), nn.Conv1d(1, 1, 3))
    frame = receptive_field(model, (1, 1, 10))
    assert frame["rf_min"].tolist()[0] == 3
    assert frame["rf_min"].isna().tolist() == [False, True, True]
    assert "read no input" in frame["note"][1]


def test_softmax_over_positions_gives_the_whole_axis_as_maximum() -> None:
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Conv1d(1, 4, 3), nn.Conv1d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.first(x)  # 3 on 10 positions
            return self.second(y * y.softmax(-1))  # min 3 + 2 = 5; max the sum over 10 positions: 3 + 9 = 12

    assert fields(Pooled(), (1, 1, 12)) == {"first": (3, 3), "second": (5, 12)}


def test_a_shared_convolution_reports_every_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.unused = nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))  # 3, then 5

    frame = receptive_field(Twice(), (1, 2, 8, 8))
    assert frame["rf_min"][0] == (3, 3) and frame["rf_max"][0] == (5, 5)
    assert frame["rf_min"][1] is None and "does not call it" in frame["note"][1]


def test_a_conv_subclass_with_its_own_forward_is_one_layer() -> None:
    class Standardized(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
            return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    model = nn.Sequential(Standardized(1, 2, 3, stride=2), Standardized(2, 2, 3))  # 3, j 2; 3 + 4 = 7
    assert fields(model, (1, 1, 16, 16)) == {"0": square(3), "1": square(7)}


def test_one_and_three_spatial_dims() -> None:
    one = receptive_field(nn.Sequential(nn.Conv1d(1, 2, 5), nn.MaxPool1d(2), nn.Conv1d(2, 2, 3)), (1, 1, 12))
    assert one["rf_min"].tolist() == [5, 10]  # 5; pool 6, j 2; 6 + 2*2 = 10
    assert all(type(value) is int for value in one["rf_min"].tolist() + one["input_size"].tolist())
    assert one["beyond_input"].tolist() == [False, False]
    three = receptive_field(nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 2, (1, 3, 3), stride=2)), (1, 1, 4, 9, 9))
    assert three["rf_min"].tolist() == [(3, 3, 3), (3, 5, 5)]  # a kernel of 1 adds nothing on the first axis
    assert three["input_size"].tolist() == [(4, 9, 9)] * 2
    assert three["beyond_input"].tolist() == [False, False]


# ---------------------------------------------------------------- what is not derived
class SelfAttention1d(nn.Module):
    """A 1-D conv, attention over its positions (a module or the function), another conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.before = nn.Conv1d(4, 8, 3)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.after = nn.Conv1d(8, 8, 3)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.before(x).transpose(1, 2)
        if self.how == "module":
            tokens, _ = self.attention(tokens, tokens, tokens)
        elif self.how == "encoder":
            tokens = self.encoder(tokens)
        elif self.how == "function":
            tokens = F.scaled_dot_product_attention(tokens, tokens, tokens)
        else:  # written out
            weights = torch.softmax(tokens @ tokens.transpose(1, 2) / 8**0.5, dim=-1)
            tokens = weights @ tokens
        return self.after(tokens.transpose(1, 2))


@pytest.mark.parametrize("how", ["module", "encoder", "function", "matmul"])
def test_attention_leaves_the_later_fields_missing_with_a_note(how: str) -> None:
    frame = receptive_field(SelfAttention1d(how), (2, 4, 20))
    assert frame["layer"].tolist() == ["before", "after"]
    assert frame["rf_min"][0] == frame["rf_max"][0] == 3
    assert frame["note"][0] == ""
    assert frame["rf_min"][1] is None and frame["rf_max"][1] is None
    assert pd.isna(frame["beyond_input"][1])
    assert frame["note"][1].startswith("attention mixes every position")


def test_data_dependent_control_flow_leaves_every_field_missing_with_a_note() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.first(x)
            if x.sum() > 0:
                x = self.second(x)
            return x

    frame = receptive_field(Branchy(), (1, 1, 8, 8))
    assert frame["layer"].tolist() == ["first", "second"]
    assert frame[["rf_min", "rf_max", "beyond_input"]].isna().all().all()
    assert frame["input_size"].tolist() == [(8, 8), (8, 8)]
    for note in frame["note"]:
        assert "cannot trace" in note and "control flow" in note
        assert len(note) < 300


def test_flattening_a_spatial_axis_stops_the_walk_with_a_note() -> None:
    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Conv2d(1, 2, 3)
            self.bottleneck = nn.Linear(2 * 6 * 6, 16)
            self.decode = nn.ConvTranspose2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode(self.bottleneck(self.encode(x).flatten(1)).view(-1, 1, 4, 4))

    frame = receptive_field(Decoder(), (1, 1, 8, 8))
    assert frame["rf_min"][0] == (3, 3)
    assert frame["rf_min"][1] is None
    assert frame["note"][1] == "flatten merges a spatial axis with other dims"


def test_an_operation_that_is_not_followed_is_named() -> None:
    class Rolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Conv1d(1, 1, 3), nn.Conv1d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(torch.roll(self.first(x), 2, dims=-1))

    frame = receptive_field(Rolled(), (1, 1, 10))
    assert frame["note"].tolist() == ["", "cannot follow 'roll' through the spatial axes"]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((32, 32), "spatial-only shape is not accepted"),
        ((3, 32), "spatial-only shape is not accepted"),
        ((1, 3, 2, 2, 2, 2), "got 6 dims"),
        ((1, 3, 0, 8), "positive ints"),
        ((1, 3, 8.0, 8), "positive ints"),
        ((1, 3, True, 8), "positive ints"),
        (8, "e.g. \\(1, 3, 32, 32\\)"),
        (None, "input_shape must be"),
    ],
)
def test_a_bad_input_shape_is_refused_with_a_message(shape: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        receptive_field(nn.Conv2d(3, 3, 3), shape)  # type: ignore[arg-type]


def test_a_shape_the_model_cannot_take_gives_a_note() -> None:
    frame = receptive_field(nn.Sequential(nn.Conv2d(3, 3, 3)), (1, 3, 8))  # a 1-D input for a 2-D conv
    assert frame["rf_min"][0] is None
    assert "does not run on the meta device" in frame["note"][0]


def test_accepts_torch_size_and_refuses_what_is_not_a_module() -> None:
    assert fields(nn.Conv1d(1, 1, 3), torch.Size([1, 1, 9])) == {"conv1d": (3, 3)}
    with pytest.raises(ValueError, match=r"model must be an nn\.Module"):
        receptive_field("resnet", (1, 3, 8, 8))  # type: ignore[arg-type]


def test_the_model_is_left_as_it_was() -> None:
    model = ResNet(BasicBlock).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    receptive_field(model, (4, 3, 16, 16))
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name  # batch norm statistics did not move
        assert after[name].device.type == "cpu"


def test_resnet50_layout_reaches_the_known_427_pixels() -> None:
    class Narrow(nn.Module):  # torchvision's ResNet-50 layout (stride in the 3x3), 4 channels wide
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            stages = [
                Bottleneck(4, 2 if index == 0 and stage > 0 else 1)
                for stage, blocks in enumerate((3, 4, 6, 3))
                for index in range(blocks)
            ]
            self.blocks = nn.Sequential(*stages)
            self.fc = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))

    frame = receptive_field(Narrow(), (1, 3, 224, 224))
    # stem 7 (j 2), max pool 7 + 2*2 = 11 (j 4); each 3x3 adds 2 j: stage 1: 3 * 8 = 24 -> 35; stage 2: 8 (then
    # j 8) + 3 * 16 -> 91; stage 3: 16 (j 16) + 5 * 32 -> 267; stage 4: 32 (j 32) + 2 * 64 -> 427.
    assert frame["rf_max"].iloc[-1] == (427, 427)
    # The shortest path skips every 3x3 but the last block's: 11 + 2*32 = 75.
    assert frame["rf_min"].iloc[-1] == (75, 75)
    assert not frame["beyond_input"].iloc[-1]  # min 75 < 224, whatever the max


def test_matrix_products_with_weights_mix_what_they_contract() -> None:
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Conv1d(2, 4, 3), nn.Conv1d(4, 4, 3)
            self.channels = nn.Parameter(torch.randn(4, 4))
            self.tokens = nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.first(x)  # 3, on 8 positions
            y = (y.transpose(1, 2) @ self.channels).transpose(1, 2)  # mixes channels: still 3
            mixed = y @ self.tokens  # mixes the 8 positions: 3 + 7 = 10
            return self.second(y + mixed)  # min 3 + 2 = 5, max 10

    assert fields(Mixer(), (1, 2, 10)) == {"first": (3, 3), "second": (5, 10)}
