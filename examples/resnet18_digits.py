"""ResNet-18 with the CIFAR stem on digits upsampled to 32x32: does the report show a tail?

The saturation papers report a tail for ResNet-18 on 32-pixel inputs (CIFAR-10):
its last stage's layers see far beyond the image and add little. This
script trains the same architecture, defined here (a 3x3 stem of stride 1
and no max-pooling; BasicBlocks [2, 2, 2, 2] of 64, 128, 256 and 512
channels), on scikit-learn's digits upsampled from 8x8 to 32x32 (one input
channel), with saturation and live probes on every convolution, and prints
``tracker.report()``; the verdict figure is ``<out>/resnet18/plots/verdicts.png``.

Residual additions keep a path whose field grows slowly: ``rf_min`` (the
smallest field over paths, the one the border is judged on) stays far
below ``rf_max``. The report judges the border on ``rf_min``.

Needs scikit-learn. An epoch takes about 40 s on two CPU cores (the run in
docs/verdicts.rst: six epochs, 231 s, test accuracy 0.986); ``--samples``
trains on fewer digits.

Run::

    python examples/resnet18_digits.py --out runs/resnet18 --epochs 6
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from delve import SaturationTracker, format_report


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, and the shortcut (a strided 1x1 convolution where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (the CIFAR stem: 3x3, stride 1, no max-pooling)."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, inputs = [], 64
        for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)))
            inputs = outputs
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def load_digits(samples: int | None = None) -> tuple[torch.Tensor, ...]:
    """Digits upsampled (bilinear) to 32x32, as ``(x_train, y_train, x_test, y_test)``: a fifth held out."""
    from sklearn.datasets import load_digits as sklearn_digits  # optional dependency, imported only here

    digits = sklearn_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:samples]
    x = F.interpolate(x[order], size=(32, 32), mode="bilinear", align_corners=False)
    y = y[order]
    test = len(y) // 5
    return x[test:], y[test:], x[:test], y[:test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=None, help="use this many digits (default: all 1797)")
    args = parser.parse_args()

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits(args.samples)
    model = ResNet18()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    savefile = os.path.join(args.out, "resnet18")
    tracker = SaturationTracker(savefile, save_to=["csv", "plot"], modules=model, stats=["lsat", "idim", "probe"])
    started = time.perf_counter()
    correct = 0
    for epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(y_train)).split(64):
            tracker.set_targets(y_train[batch])
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for batch in torch.arange(len(y_test)).split(256):
                tracker.set_targets(y_test[batch])
                correct += int((model(x_test[batch]).argmax(1) == y_test[batch]).sum())
        tracker.add_scalar("test-accuracy", correct / len(y_test))
        tracker.add_saturations()
        print(f"epoch {epoch}: {time.perf_counter() - started:.0f} s, test accuracy {correct / len(y_test):.3f}")
    print(f"== ResNet-18, 32x32 digits: {args.epochs} epochs in {time.perf_counter() - started:.0f} s")
    print(format_report(tracker.report(), tracker.run_record, tracker.epoch - 1))
    print(tracker.receptive_fields()[["layer", "rf_min", "rf_max", "beyond_input"]].to_string(index=False))
    tracker.close()
    print(f"figure: {os.path.join(savefile, 'plots', 'verdicts.png')}")


if __name__ == "__main__":
    main()
