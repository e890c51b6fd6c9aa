"""A writer of your own: every epoch as one JSON line.

Subclass :class:`delve.writers.AbstractWriter` and implement ``add_scalar``
and ``save``; ``add_array``, ``close`` and ``resume_from_saved_state`` have
sensible defaults. Register the class under a key to use it in ``save_to``
like a built-in writer, or pass an instance directly.

This writer collects the scalars of each epoch and, on every ``save()``,
rewrites ``<savefile>.jsonl`` atomically with one JSON object per epoch.

Run::

    python examples/custom_writer.py --epochs 5 --out runs/custom_writer
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
from torch import nn

from delve import SaturationTracker, register_writer
from delve.common.files import atomic_write
from delve.writers import AbstractWriter


class JSONLinesWriter(AbstractWriter):
    """Write ``<savepath>.jsonl``: one ``{"epoch": e, name: value, ...}`` object per line."""

    def __init__(self, savepath: str, **kwargs: Any) -> None:
        super().__init__(savepath)
        self.path = self.savepath + ".jsonl"
        self.epochs: dict[int, dict[str, float]] = {}

    def add_scalar(self, name: str, value: float, epoch: int | None = None, **kwargs: Any) -> None:
        epoch = max(self.epochs, default=0) if epoch is None else int(epoch)
        self.epochs.setdefault(epoch, {})[name] = float(value)

    def save(self) -> None:
        lines = [json.dumps({"epoch": epoch, **values}) for epoch, values in sorted(self.epochs.items())]
        atomic_write(self.path, lambda handle: handle.write("\n".join(lines) + "\n"))

    def resume_from_saved_state(self, initial_epoch: int) -> None:
        # Keep what an earlier run wrote for the epochs before the one we resume at.
        if os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    record = json.loads(line)
                    epoch = record.pop("epoch")
                    if epoch < initial_epoch:
                        self.epochs[epoch] = record


register_writer("jsonl", JSONLinesWriter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/custom_writer")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    savefile = os.path.join(args.out, "run")
    # Keys and instances mix freely: "csv" is built in, "jsonl" is registered above.
    with SaturationTracker(savefile, save_to=["csv", "jsonl"], modules=model, stats=["lsat", "trc"]) as tracker:
        for _ in range(args.epochs):
            for batch in torch.randperm(len(x)).split(32):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
            tracker.add_scalar("train-loss", loss.item())
            tracker.add_saturations()

    with open(savefile + ".jsonl") as handle:
        print(handle.read().rstrip())
    print(f"written: {savefile}.jsonl and {savefile}.csv")


if __name__ == "__main__":
    main()
