"""What the Lightning tests share: a float64 LightningModule that keeps its layer outputs, data, references.

Not a test module: pytest does not collect it. The references are computed
with numpy from the outputs the module kept (conftest's ``ref``), never with
delve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

# pytest's doctest collection imports every file here; without the extra, skip rather than fail.
L = pytest.importorskip("lightning", reason="the Lightning tests need pip install 'delve[lightning]'")

STATS = ["lsat", "idim", "trc", "dtrc", "det"]
LAYERS = ("fc", "out")


class Net(L.LightningModule):
    """Two Linear layers in float64; ``captured`` keeps their outputs for the reference."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4).double()
        self.out = nn.Linear(4, 2).double()
        self.lr = lr
        self.captured: dict[tuple[int, str], dict[str, list[np.ndarray]]] = {}
        self.training_batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        output = self.out(torch.tanh(hidden))
        if not self.trainer.sanity_checking:
            mode = "train" if self.training else "eval"
            slot = self.captured.setdefault((self.current_epoch, mode), {"fc": [], "out": []})
            slot["fc"].append(hidden.detach().numpy().copy())
            slot["out"].append(output.detach().numpy().copy())
        return output

    def training_step(self, batch, batch_index):
        self.training_batches += 1
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_index):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n: int = 48, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.1, 2.0]) + 4.0
    y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x, y


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(tmp_path: Path, callbacks: list, logger=False, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
    )
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, logger=logger, **options)


def new_net(seed: int = 11) -> Net:
    torch.manual_seed(seed)
    return Net()


def expected_values(net: Net, epoch: int, ref, modes=("train", "eval")) -> dict[str, float]:
    """numpy statistics of the rows the module produced in ``epoch``."""
    values = {}
    for mode in modes:
        for layer in LAYERS:
            rows = np.concatenate(net.captured[(epoch, mode)][layer])
            for name, value in ref.stats(rows).items():
                if name != "cov":  # the matrix never reaches a logger
                    values[f"{mode}-{name}_{layer}"] = value
    return values


def assert_values(actual, expected: dict[str, float], rtol: float = 1e-10) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=rtol, abs=1e-12), name


def metrics_rows(path: Path) -> pd.DataFrame:
    """The CSVLogger rows that hold delve's values."""
    frame = pd.read_csv(path)
    return frame[frame["train-saturation_fc"].notna()].reset_index(drop=True)


def tracked_hooks(net: nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in net.modules())
