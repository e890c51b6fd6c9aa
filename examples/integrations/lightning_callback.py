"""Layer saturation of a Lightning model, in the trainer's own loggers.

A LightningModule with three Linear layers classifies 16-dimensional points
whose classes differ in a 3-dimensional subspace only. One line,
``callbacks=[SaturationCallback(...)]``, adds per-layer saturation and
intrinsic dimensionality, for the training batches and for the validation
batches, to the CSVLogger's ``metrics.csv`` next to the loss, once per epoch.
``save_to="csv"`` also lets delve write its own ``delve.csv`` in the same
folder (one row per epoch).

Needs ``pip install 'delve[lightning]'``. Run::

    python examples/integrations/lightning_callback.py --epochs 5 --out runs/lightning
"""

from __future__ import annotations

import argparse
import os

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from delve.integrations.lightning import SaturationCallback

FEATURES, CLASSES, WIDTH = 16, 4, 32


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    points = 0.3 * torch.randn(n, FEATURES, generator=generator)
    # Only the first three coordinates carry the class.
    centres = 2.0 * torch.randn(CLASSES, 3, generator=torch.Generator().manual_seed(99))
    points[:, :3] += centres[labels]
    return TensorDataset(points, labels)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU())
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))

    def training_step(self, batch, batch_index):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_index):
        x, y = batch
        self.log("val_accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/lightning_callback")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    train = DataLoader(make_data(1024, seed=0), batch_size=64, shuffle=True)
    val = DataLoader(make_data(512, seed=1), batch_size=256)
    callback = SaturationCallback(save_to="csv", stats=["lsat", "idim"])
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=CSVLogger(args.out, name="", version=""),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), train, val)

    folder = os.path.normpath(trainer.logger.log_dir)
    print(f"logged to {os.path.join(folder, 'metrics.csv')} and {os.path.join(folder, 'delve.csv')}")
    for name, value in callback.last_values.items():
        if "saturation" in name:
            print(f"  last epoch {name:30s} {value:.3f}")


if __name__ == "__main__":
    main()
