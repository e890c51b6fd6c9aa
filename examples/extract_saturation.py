"""Two-layer regression: how saturated is the hidden layer at different widths?

The target depends on only three of the ten inputs, so a wide hidden layer has
far more dimensions than the problem needs. Three networks with 4, 16 and 64
hidden units are trained on the same data; delve writes one CSV per network
(``<out>/hidden<width>.csv``) and the script prints the last epoch's values.

Run::

    python examples/extract_saturation.py --epochs 20 --out runs/extract
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker

WIDTHS = (4, 16, 64)


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten standard-normal inputs; the target uses only the first three."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    y = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    return x, y


def train(hidden: int, epochs: int, out: str) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = make_data(2048)
    model = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = SaturationTracker(
        os.path.join(out, f"hidden{hidden}"), save_to="csv", modules=model, stats=["lsat", "idim"]
    )
    values: dict[str, float] = {}
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(128):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            tracker.add_scalar("train-loss", nn.functional.mse_loss(model(x), y).item())
        values = tracker.add_saturations()
    tracker.close()  # removes the hooks and writes the CSV one last time
    return values


def final_loss(out: str, hidden: int) -> float:
    """The last epoch's loss, read back from the CSV delve wrote."""
    with open(os.path.join(out, f"hidden{hidden}.csv")) as handle:
        header, *rows = [line.rstrip("\n").split(";") for line in handle]
    return float(rows[-1][header.index("train-loss")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/extract_saturation")
    args = parser.parse_args()

    print(f"{'hidden':>6}  {'loss':>6}  {'saturation':>10}  {'k':>3}")
    for hidden in WIDTHS:
        values = train(hidden, args.epochs, args.out)
        # Layer "0" is the hidden Linear layer, "2" the output layer.
        print(
            f"{hidden:>6}  {final_loss(args.out, hidden):>6.3f}  {values['train-saturation_0']:>10.2f}  "
            f"{values['train-intrinsic-dimensionality_0']:>3d}"
        )
    print(f"CSV files in {args.out}/")


if __name__ == "__main__":
    main()
