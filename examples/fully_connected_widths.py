"""A four-layer fully connected classifier at several hidden widths.

The inputs are 32-dimensional, but the five classes differ only inside a
4-dimensional subspace. Whatever the width, the hidden layers need only a few
dimensions; the wider the layer, the smaller the fraction it uses. The script
prints the last epoch's saturation of every layer, one column per width, and
writes ``<out>/width<w>.csv``.

Run::

    python examples/fully_connected_widths.py --epochs 15 --out runs/widths
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker

WIDTHS = (16, 64, 256)
N_CLASSES = 5


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes whose centres lie in a random 4-dimensional subspace of R^32."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(32, 4, generator=generator)).Q  # (32, 4), orthonormal columns
    centres = 3 * torch.randn(N_CLASSES, 4, generator=generator) @ basis.T
    labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
    x = centres[labels] + torch.randn(n, 32, generator=generator)
    return x, labels


def build(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(32, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, N_CLASSES),
    )  # fmt: skip


def train(width: int, epochs: int, out: str) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = make_data(4096)
    model = build(width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    values: dict[str, float] = {}
    with SaturationTracker(
        os.path.join(out, f"width{width}"), save_to="csv", modules=model, average_sat=True
    ) as tracker:
        for _ in range(epochs):
            correct = 0
            for batch in torch.randperm(len(x)).split(256):
                optimizer.zero_grad()
                logits = model(x[batch])
                loss = nn.functional.cross_entropy(logits, y[batch])
                loss.backward()
                optimizer.step()
                correct += int((logits.argmax(1) == y[batch]).sum())
            tracker.add_scalar("train-accuracy", correct / len(x))
            values = tracker.add_saturations()
            values["train-accuracy"] = correct / len(x)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default="runs/fully_connected_widths")
    args = parser.parse_args()

    results = {width: train(width, args.epochs, args.out) for width in WIDTHS}
    print("saturation per layer (last epoch)")
    print("layer   " + "".join(f"{f'width {w}':>11}" for w in WIDTHS))
    for layer in ("0", "2", "4", "6"):
        row = "".join(f"{results[w][f'train-saturation_{layer}']:>11.2f}" for w in WIDTHS)
        print(f"{layer:<8}{row}")
    print("average " + "".join(f"{results[w]['train-average-saturation']:>11.2f}" for w in WIDTHS))
    print("accuracy" + "".join(f"{results[w]['train-accuracy']:>11.1%}" for w in WIDTHS))
    print(f"CSV files in {args.out}/")


if __name__ == "__main__":
    main()
