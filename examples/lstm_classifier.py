"""An LSTM that classifies noisy sine waves by frequency.

For recurrent layers ``timeseries_method`` decides what an observation is:
``last_timestep`` (default) takes the output after the whole sequence, one
sample per sequence; ``timestepwise`` takes the output at every step, so a
batch of ``n`` sequences of length ``t`` gives ``n * t`` samples. Two trackers
watch the same model, one per method, and write ``<out>/<method>.csv``.

Run::

    python examples/lstm_classifier.py --epochs 12 --out runs/lstm
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker

FREQUENCIES = (1.0, 3.0, 6.0)
LENGTH = 24


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, LENGTH, 1)`` sine waves with random phase and noise; the label is the frequency's index."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(FREQUENCIES), (n,), generator=generator)
    frequency = torch.tensor(FREQUENCIES)[labels].unsqueeze(1)
    phase = 2 * torch.pi * torch.rand(n, 1, generator=generator)
    t = torch.linspace(0, 2 * torch.pi, LENGTH)
    x = torch.sin(frequency * t + phase) + 0.3 * torch.randn(n, LENGTH, generator=generator)
    return x.unsqueeze(-1), labels


class SequenceClassifier(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, len(FREQUENCIES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="runs/lstm_classifier")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = make_data(512)
    x_test, y_test = make_data(256, seed=1)
    model = SequenceClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trackers = [
        SaturationTracker(os.path.join(args.out, method), save_to="csv", modules=model, timeseries_method=method)
        for method in ("last_timestep", "timestepwise")
    ]
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # keeps the LSTM's training stable
            optimizer.step()
        model.eval()
        with torch.no_grad():  # eval-mode passes feed the "eval-" statistics
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        for tracker in trackers:
            tracker.add_scalar("test-accuracy", accuracy)
        last = [tracker.add_saturations() for tracker in trackers]
    for tracker in trackers:
        tracker.close()

    print(f"test accuracy {accuracy:.1%}")
    for method, values in zip(("last_timestep", "timestepwise"), last):
        print(
            f"{method:<14} LSTM saturation train {values['train-saturation_lstm']:.2f}, "
            f"eval {values['eval-saturation_lstm']:.2f}"
        )
    print(f"CSV files in {args.out}/")


if __name__ == "__main__":
    main()
