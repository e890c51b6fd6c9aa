"""Convolutional and dense benchmark models, defined here so the benchmark needs no model zoo.

Every model returns class logits of shape ``(batch, classes)``. The layer
choices follow the published architectures closely enough that the tracker
sees the same layer kinds, widths and numbers of observation rows; training
details that do not change those (stochastic depth, dropout, weight
initialisation schemes) are left out.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "mlp", "vgg_cnn", "LSTMClassifier", "TinyTransformer", "BasicBlock", "ResNet18",
    "SqueezeExcite", "MBConv", "EfficientNetB0", "B0_STAGES",
]


# ----------------------------------------------------------- original models
def mlp(width: int = 1024) -> nn.Module:
    """3072-1024-1024-512-10 by default; ``width`` scales the hidden layers."""
    return nn.Sequential(
        nn.Linear(3072, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width // 2), nn.ReLU(),
        nn.Linear(width // 2, 10),
    )


def vgg_cnn() -> nn.Module:
    """VGG-style: conv 64-64, pool, 128-128, pool, 256, global pool, linear."""

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(3, 64), *conv(64, 64), nn.MaxPool2d(2),
        *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),
        *conv(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(256, 10),
    )


class LSTMClassifier(nn.Module):
    """Two-layer LSTM over 64-feature sequences, classified from the last step."""

    def __init__(self, features: int = 64, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(x)
        return self.head(sequence[:, -1])


class TinyTransformer(nn.Module):
    """Two encoder layers (d_model 128, 4 heads, feed-forward 512), mean-pooled."""

    def __init__(self, features: int = 32, d_model: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


# ------------------------------------------------------------------ ResNet-18
class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18: 4 stages of 2 basic blocks, 64 to 512 channels (11.2 M parameters at 10 classes).

    Parameters
    ----------
    image_size : int
        Below 128 the CIFAR stem (one 3x3 convolution, no max-pool), so a
        32x32 image keeps 32x32 maps in the first stage; from 128 the ImageNet
        stem (7x7 stride-2 convolution and a max-pool).
    classes : int
        Outputs of the final linear layer.
    """

    def __init__(self, image_size: int = 32, classes: int = 10) -> None:
        super().__init__()
        if image_size >= 128:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


# ------------------------------------------------------------ EfficientNet-B0
# (expansion, output channels, repeats, first stride, kernel) per stage: the B0 table.
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)


class SqueezeExcite(nn.Module):
    """Channel gating from the pooled map, with 1x1 convolutions as in the reference B0.

    The two convolutions see one pooled position per image, so the tracker
    gets ``batch`` rows of the expanded width: a wide, very short update.
    """

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(scale))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk, squeeze-excitation, 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int, kernel: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.SiLU(),
            # B0 sizes the squeeze from the block's input width, not the expanded one.
            SqueezeExcite(hidden, max(1, c_in // 4)),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 layout (width and depth multipliers 1.0): 16 MBConv blocks, head to 1280.

    At 64x64 inputs the stride-2 stem and the four stride-2 stages leave 2x2
    maps in the last two stages, so the widest layers (1152 expanded
    channels) get four rows per image.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU())
        blocks: list[nn.Module] = []
        c_in = 32
        for expansion, c_out, repeats, stride, kernel in B0_STAGES:
            for index in range(repeats):
                blocks.append(MBConv(c_in, c_out, expansion, stride if index == 0 else 1, kernel))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c_in, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.SiLU())
        self.fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))
