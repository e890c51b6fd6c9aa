"""Stop a run after some epochs and resume it, continuing the same CSV.

The first part trains for ``--stop-after`` epochs and saves a checkpoint with
the model, the optimizer and the tracker's state. The second part plays the
restarted process: it builds everything anew, loads the checkpoint with
``torch.load(..., weights_only=True)`` and creates the tracker with
``initial_epoch`` set to the next epoch. The CSV writer keeps the rows of the
epochs before ``initial_epoch`` and the run continues as if never stopped.

Run::

    python examples/resume_run.py --epochs 6 --stop-after 3 --out runs/resume
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker
from delve.common.files import atomic_path


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 16, generator=generator)
    y = (x[:, :4].sum(1) > 0).long()
    return x, y


def build() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tracker: SaturationTracker,
    x: torch.Tensor,
    y: torch.Tensor,
    first: int,
    last: int,
) -> None:
    for epoch in range(first, last):
        generator = torch.Generator().manual_seed(epoch)  # the batch order depends only on the epoch
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        tracker.add_saturations()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="total epochs")
    parser.add_argument("--stop-after", type=int, default=None, help="epochs before the stop (default: half)")
    parser.add_argument("--out", default="runs/resume_run")
    args = parser.parse_args()
    stop = args.epochs // 2 if args.stop_after is None else args.stop_after
    if not 0 < stop < args.epochs:
        parser.error("--stop-after must lie between 0 and --epochs (exclusive)")
    savefile = os.path.join(args.out, "run")
    checkpoint = os.path.join(args.out, "checkpoint.pt")
    x, y = make_data()

    # ---- first process: train, then save a checkpoint and stop
    torch.manual_seed(0)
    model, optimizer = build()
    tracker = SaturationTracker(savefile, save_to="csv", modules=model)
    train_epochs(model, optimizer, tracker, x, y, 0, stop)
    with atomic_path(checkpoint) as tmp:  # a crash while saving never leaves a half-written checkpoint
        torch.save(
            {"epoch": stop, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "tracker": tracker.state_dict()},
            tmp,
        )  # fmt: skip
    tracker.close()
    print(f"stopped after epoch {stop - 1}; checkpoint {checkpoint}")

    # ---- second process: rebuild, load, continue
    state = torch.load(checkpoint, weights_only=True)
    model, optimizer = build()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    tracker = SaturationTracker(savefile, save_to="csv", modules=model, initial_epoch=state["epoch"])
    tracker.load_state_dict(state["tracker"])
    train_epochs(model, optimizer, tracker, x, y, state["epoch"], args.epochs)
    tracker.close()

    with open(savefile + ".csv") as handle:
        epochs = [line.split(";")[0] for line in handle][1:]
    print(f"resumed at epoch {state['epoch']}; {savefile}.csv holds epochs {', '.join(epochs)}")


if __name__ == "__main__":
    main()
