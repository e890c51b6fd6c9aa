"""The receptive-field tail: a plain 12-layer CNN on 8x8 digits, and on the same digits at 32x32.

Twelve 3x3 convolutions (padding 1, 32 channels, batch norm, ReLU) and no
pooling until a global average and a linear head: at layer L a unit sees
1 + 2L pixels, so at the native 8x8 resolution every layer from the fourth
on sees beyond the image. The saturation papers call the layers past that
border that add nothing the *tail*: their saturation falls while a linear
probe of their features gains nothing. Upsampled to 32x32, no layer reaches
the border, and there is no tail.

Each size trains ``--epochs`` epochs with ``stats=["lsat", "idim", "probe"]``
(live probes fitted on the training samples, scored on the held-out ones),
then prints ``tracker.report()`` and writes the verdict figure
(``<out>/plain<size>/plots/verdicts.png``); with several sizes,
``<out>/probes.png`` puts their probes and saturations side by side. Needs
scikit-learn, whose digits data set ships with the package. On two CPU
cores the 8x8 run takes well under a minute, the 32x32 one (16 times the
positions) a few minutes.

Run::

    python examples/receptive_field_tail.py --out runs/tail
"""

from __future__ import annotations

import argparse
import os
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from delve import SaturationTracker, format_report, load_results
from delve.output.canvas import new_figure, save_figure


def load_digits(size: int, samples: int | None = None) -> tuple[torch.Tensor, ...]:
    """Digits as ``(x_train, y_train, x_test, y_test)``, upsampled (bilinear) from 8x8 to ``size``."""
    from sklearn.datasets import load_digits as sklearn_digits  # optional dependency, imported only here

    digits = sklearn_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:samples]
    x, y = x[order], y[order]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    test = len(y) // 5
    return x[test:], y[test:], x[:test], y[:test]


def plain_cnn(depth: int = 12, width: int = 32) -> nn.Sequential:
    """``depth`` x (3x3 conv, padding 1; batch norm; ReLU), then a global average and a linear head.

    The convolutions are named ``conv1`` ... ``conv12``, the names the tracker
    and the report use.
    """
    layers: dict[str, nn.Module] = {}
    channels = 1
    for index in range(1, depth + 1):
        layers[f"conv{index}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        layers[f"norm{index}"] = nn.BatchNorm2d(width)
        layers[f"relu{index}"] = nn.ReLU()
        channels = width
    layers.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), head=nn.Linear(width, 10))
    return nn.Sequential(OrderedDict(layers))


def train(size: int, epochs: int, out: str, samples: int | None) -> str:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits(size, samples)
    model = plain_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    savefile = os.path.join(out, f"plain{size}")
    tracker = SaturationTracker(savefile, save_to=["csv", "plot"], modules=model, stats=["lsat", "idim", "probe"])
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train)).split(64):
            tracker.set_targets(y_train[batch])  # the probes' targets for this forward pass
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
    seconds = time.perf_counter() - started
    print(f"== {size}x{size} input: {epochs} epochs in {seconds:.0f} s, test accuracy {correct / len(y_test):.3f}")
    print(format_report(tracker.report(), tracker.run_record, tracker.epoch - 1))
    tracker.close()
    print(f"figure: {os.path.join(savefile, 'plots', 'verdicts.png')}\n")
    return savefile


def probe_figure(savefiles: dict[int, str], path: str) -> None:
    """Per convolution, each size's probe accuracy (held out, and in-sample) beside its training saturation."""
    figure = new_figure(6.0 * len(savefiles), 4.0)
    for column, (size, savefile) in enumerate(savefiles.items()):
        results = load_results(savefile)
        last = results[(results["epoch"] == results["epoch"].max()) & results["layer"].str.startswith("conv")]
        axes = figure.add_axes((0.07 + column / len(savefiles), 0.14, 0.86 / len(savefiles), 0.74))
        for stat, mode, style in (
            ("probe-accuracy", "eval", "g:^"),
            ("probe-accuracy", "train", "g-"),
            ("saturation", "train", "b-o"),
        ):
            values = last[(last["stat"] == stat) & (last["mode"] == mode)]
            layers = [int(layer.removeprefix("conv")) for layer in values["layer"]]
            axes.plot(layers, values["value"], style, label=f"{stat} ({mode})", markersize=4, linewidth=1.4)
        border = next((layer for layer in range(1, 13) if 1 + 2 * layer > size), None)
        if border is not None:
            axes.axvline(border - 0.5, color="tab:red", linewidth=1.2)
        axes.set_ylim(0.0, 1.05)
        axes.set_xticks(range(1, 13))
        axes.set_xlabel("convolution")
        axes.set_title(f"{size}x{size} input" + (f": fields exceed it from conv{border}" if border else ""))
        axes.grid(alpha=0.3)
        if column == 0:
            axes.legend(fontsize=8, frameon=False, loc="lower right")
    save_figure(figure, path)
    print(f"probes: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/tail")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32], help="input sizes (default: 8 32)")
    parser.add_argument("--samples", type=int, default=None, help="use this many digits (default: all 1797)")
    args = parser.parse_args()
    savefiles = {size: train(size, args.epochs, args.out, args.samples) for size in args.sizes}
    if len(savefiles) > 1:
        probe_figure(savefiles, os.path.join(args.out, "probes.png"))


if __name__ == "__main__":
    main()
