"""A CNN on scikit-learn's digits, seen through every ``conv_method``.

A convolution's output has a channel axis and spatial axes; ``conv_method``
decides what counts as one observation of the layer:

* ``channelwise`` (default): every pixel position of every image is a sample
  of a ``channels``-dimensional vector;
* ``mean`` / ``max`` / ``median``: each feature map is pooled over space first,
  one sample per image;
* ``flatten``: the whole ``channels x height x width`` map is one sample.

Several trackers can watch the same model, so one training run is observed in
all five ways at once. Needs scikit-learn (``pip install delve[demo]``), whose
digits data set ships with the package.

Run::

    python examples/conv_methods_digits.py --epochs 8 --out runs/conv_methods
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker

METHODS = ("channelwise", "mean", "max", "median", "flatten")


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # optional dependency, imported only here

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.as_tensor(digits.target)


def build() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="runs/conv_methods")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = load_digits_tensors()
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    trackers = {
        method: SaturationTracker(
            os.path.join(args.out, method), save_to="csv", modules=model, conv_method=method, stats=["lsat", "idim"]
        )
        for method in METHODS
    }
    last: dict[str, dict[str, float]] = {}
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        last = {method: tracker.add_saturations() for method, tracker in trackers.items()}
    for tracker in trackers.values():
        tracker.close()

    # Layers "0" and "2" are the convolutions (8 and 16 channels), "6" the Linear output layer.
    # flatten observes 8*8*8 = 512 and 16*8*8 = 1024 features per image instead of 8 and 16.
    print("saturation (intrinsic dimensionality) of each convolution, last epoch")
    print("method       " + "".join(f"{'layer ' + layer:>16}" for layer in ("0", "2")))
    for method, values in last.items():
        cells = [
            f"{values[f'train-saturation_{layer}']:.2f} ({values[f'train-intrinsic-dimensionality_{layer}']})"
            for layer in ("0", "2")
        ]
        print(f"{method:<13}" + "".join(f"{cell:>16}" for cell in cells))
    print(f"CSV files in {args.out}/")


if __name__ == "__main__":
    main()
