"""A conv stack whose saturation falls by construction: shared by the report's tests (tracker and CLI)."""

from __future__ import annotations

import torch
from torch import nn

# Channels each convolution keeps of the one before: 8, 8, 6, 3, 1 of 8.
KEPT = (8, 8, 6, 3, 1)


def copying_stack() -> nn.Sequential:
    """Five 3x3 convolutions of 8 channels, padding 1: a random first one, then copies of fewer channels.

    Layer L+1 copies (centre tap 1) the first ``KEPT[L]`` channels of layer L
    and zeroes the rest, so its outputs are a subset of the first layer's
    channels: its saturation can only fall, and does.
    """
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 8, 3, padding=1, bias=False)]
    for kept in KEPT[1:]:
        conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            for channel in range(kept):
                conv.weight[channel, channel, 1, 1] = 1.0
        layers.append(conv)
    return nn.Sequential(*layers)
