"""The index arithmetic against brute force: which input pixels autograd says an output depends on.

For a chain with positive weights (no max pooling, no activations) an output
position depends on an input pixel exactly when its gradient there is not
zero; the span of those pixels is the field. Positions far from the borders
cover every phase of the periodic reads, so the smallest and the largest span
among them are ``rf_min`` and ``rf_max``.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from delve.verdicts import receptive_field
from delve.verdicts.fields import (
    apply_map,
    field_range,
    input_class,
    merge_classes,
    resample_map,
    transposed_map,
    window_map,
)

pytestmark = pytest.mark.filterwarnings("error")

LENGTH = 240


class Interpolate(nn.Module):
    def __init__(self, factor: float, mode: str, align_corners: bool | None = None) -> None:
        super().__init__()
        self.factor, self.mode, self.align_corners = factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=self.align_corners)


CHAINS = {
    "dilated, pooled, upsampled": [
        nn.Conv1d(1, 1, 3, dilation=2),
        nn.AvgPool1d(2),
        Interpolate(2, "nearest"),
        nn.Conv1d(1, 1, 2),
        nn.Conv1d(1, 1, 3),
    ],
    "strided, linear 2x, nearest 3x": [
        nn.Conv1d(1, 1, 3, stride=2),
        Interpolate(2, "linear"),
        nn.Conv1d(1, 1, 3),
        Interpolate(3, "nearest"),
        nn.Conv1d(1, 1, 2),
    ],
    "transposed with dilation": [
        nn.Conv1d(1, 1, 3, stride=2),
        nn.ConvTranspose1d(1, 1, 3, stride=2, dilation=3),  # o = 2i + 3t reaches every o
        nn.Conv1d(1, 1, 2),
    ],
    "uneven adaptive pooling, linear 3x": [
        nn.Conv1d(1, 1, 2),
        nn.AdaptiveAvgPool1d(LENGTH * 2 // 3),
        nn.Conv1d(1, 1, 3),
        Interpolate(3, "linear"),
        nn.Conv1d(1, 1, 2, stride=3),
    ],
    "nearest-exact 1.5x, pooling": [
        nn.Conv1d(1, 1, 3),
        Interpolate(1.5, "nearest-exact"),
        nn.AvgPool1d(3, stride=2),
        nn.Conv1d(1, 1, 2),
    ],
}


def brute_force(model: nn.Module, length: int) -> tuple[int, int]:
    """Smallest and largest span of nonzero input gradients over the middle third of the output."""
    for parameter in model.parameters():
        nn.init.constant_(parameter, 1.0 if parameter.ndim > 1 else 0.0)
    x = torch.ones(1, 1, length, dtype=torch.float64, requires_grad=True)
    out = model.double()(x)
    size = out.shape[-1]
    spans = []
    for position in range(size // 3, 2 * size // 3):
        (grad,) = torch.autograd.grad(out[0, 0, position], x, retain_graph=True)
        touched = torch.nonzero(grad[0, 0]).flatten()
        spans.append(int(touched.max() - touched.min()) + 1)
    return min(spans), max(spans)


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fields_match_the_gradients(name: str) -> None:
    model = nn.Sequential(*CHAINS[name])
    frame = receptive_field(model, (1, 1, LENGTH))
    assert (frame["note"] == "").all(), frame["note"].tolist()
    last = frame.iloc[-1]
    assert (last["rf_min"], last["rf_max"]) == brute_force(model, LENGTH)


def test_a_plain_stack_keeps_period_one() -> None:
    field = input_class()
    for index_map in (window_map(3), window_map(2, stride=2), window_map(3, dilation=2)):
        field = apply_map(field, index_map)
    # 3; 3 + 1 = 4, j 2; 4 + 4*2 = 12.
    assert (field.period, field.shift, field.sizes()) == (1, 2, [12])


def test_periods_shrink_back_after_upsampling() -> None:
    up = apply_map(input_class(), resample_map("nearest", Fraction(1, 2)))
    assert (up.period, up.shift) == (2, 1)  # two positions per input pixel
    down = apply_map(up, window_map(2, stride=2))  # reads both copies of one pixel
    assert (down.period, down.shift, down.sizes()) == (1, 1, [1])


def test_transposed_maps() -> None:
    assert transposed_map(3, stride=2).reads == ((-1, 0), (0,))  # o = 2i + t: even o reads two inputs
    assert transposed_map(1, stride=2).reads == ((0,), ())  # odd outputs read nothing


def test_merging_keeps_the_extremes_of_each_family() -> None:
    fields = [input_class()]
    for _ in range(4):
        fields.append(apply_map(fields[-1], window_map(3)))
    up = apply_map(input_class(), resample_map("nearest", Fraction(1, 2)))
    merged = merge_classes([*fields, up])
    assert sorted(path.sizes()[0] for path in merged if path.period == 1) == [1, 9]
    assert field_range(merged) == (1, 9)
