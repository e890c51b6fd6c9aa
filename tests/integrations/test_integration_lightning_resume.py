"""The Lightning callback's checkpoint state: resumed fits give the values of uninterrupted ones.

Checkpoints are Lightning's own (``ModelCheckpoint``, ``trainer.save_checkpoint``),
loaded back with ``torch.load(..., weights_only=True)``; a mid-epoch state is
also checked against numpy on the rows the module produced before the
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning_helpers import LAYERS, STATS, loader, make_data, metrics_rows, new_net, trainer  # noqa: E402

from delve import SaturationTracker  # noqa: E402
from delve.integrations.lightning import SaturationCallback  # noqa: E402

# Lightning's advice about its own checkpoints: these tests resume into another checkpoint folder, with
# checkpoint callbacks other than those that wrote the checkpoint, on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed from:UserWarning"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`, callbacks used to create:UserWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: on a shared CPU, one intra-op thread is about ten times faster than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resuming_from_an_epoch_end_checkpoint_continues_exactly(tmp_path) -> None:
    x, y = make_data()
    callback = SaturationCallback(stats=STATS)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    L.seed_everything(0)
    trainer(tmp_path, [callback, saver], enable_checkpointing=True).fit(
        new_net(), loader(x, y, 8), loader(x[:12], y[:12], 6)
    )
    straight = dict(callback.last_values)

    checkpoint = tmp_path / "ckpt" / "epoch=0-step=6.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    state = saved["callbacks"][callback.state_key]
    assert len(state["ranks"]) == 1 and state["ranks"][0]["epoch"] == 1 and not state["epoch_open"]

    resumed_callback = SaturationCallback(stats=STATS)
    L.seed_everything(0)
    net = new_net(seed=99)  # other weights: the checkpoint must bring them back
    trainer(tmp_path, [resumed_callback]).fit(net, loader(x, y, 8), loader(x[:12], y[:12], 6), ckpt_path=checkpoint)
    assert resumed_callback.tracker is not None and resumed_callback.tracker.epoch == 2
    assert resumed_callback.last_values == straight


class ResumableLoader:
    """Batches in a fixed order; Lightning saves and restores the position through state_dict."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self._start = 0
        self._position = 0

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self):
        start, self._start = self._start, 0
        for index in range(start, len(self)):
            self._position = index + 1
            window = slice(index * self.batch_size, (index + 1) * self.batch_size)
            yield self.x[window], self.y[window]

    def state_dict(self) -> dict:
        return {"position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self._start = state["position"]


def test_a_mid_epoch_checkpoint_restores_the_partial_accumulators(tmp_path, ref) -> None:
    x, y = make_data()
    callback = SaturationCallback(stats=STATS)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2)
    net = new_net()
    trainer(tmp_path, [callback, saver], enable_checkpointing=True).fit(net, ResumableLoader(x, y, 8))
    straight = dict(callback.last_values)

    # Two of epoch 1's six batches are in the checkpoint's accumulators.
    checkpoint = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    state = torch.load(checkpoint, weights_only=True)["callbacks"][callback.state_key]
    assert state["fit_epoch"] == 1 and state["epoch_open"]

    partial = SaturationTracker("partial", modules=new_net(), stats=STATS, nosave=True)
    partial.load_state_dict(state["ranks"][0])
    rows = np.concatenate(net.captured[(1, "train")]["fc"][:2])
    assert partial.compute_saturations()["train-covariance-trace_fc"] == pytest.approx(
        float(np.trace(ref.cov(rows))), rel=1e-10
    )
    partial.close()

    # The resumed run checkpoints as the first one did: saving merges the small batches held back,
    # so both runs group their merges alike and agree to the last bit.
    resumed_callback = SaturationCallback(stats=STATS)
    resumed_net = new_net()
    again = ModelCheckpoint(dirpath=tmp_path / "ckpt-resumed", save_top_k=-1, every_n_train_steps=2)
    trainer(tmp_path, [resumed_callback, again], enable_checkpointing=True).fit(
        resumed_net, ResumableLoader(x, y, 8), ckpt_path=checkpoint
    )
    assert resumed_net.training_batches == 4
    assert resumed_callback.last_values == straight


class SaveAtEpochEnd(Callback):
    """Saves a checkpoint in on_train_epoch_end, before SaturationCallback has computed the epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


def test_a_checkpoint_taken_before_the_epoch_was_computed_still_resumes_exactly(tmp_path) -> None:
    x, y = make_data()
    path = tmp_path / "early.ckpt"
    callback = SaturationCallback(stats=STATS)
    fit = trainer(tmp_path, [SaveAtEpochEnd(path), callback], logger=CSVLogger(tmp_path, name="a", version=0))
    fit.fit(new_net(), loader(x, y, 8))
    state = torch.load(path, weights_only=True)["callbacks"][callback.state_key]
    assert state["epoch_open"] and state["fit_epoch"] == 0

    resumed = SaturationCallback(stats=STATS)
    fit = trainer(tmp_path, [resumed], logger=CSVLogger(tmp_path, name="b", version=0))
    fit.fit(new_net(), loader(x, y, 8), ckpt_path=path)
    straight_rows = metrics_rows(tmp_path / "a" / "version_0" / "metrics.csv")
    resumed_rows = metrics_rows(tmp_path / "b" / "version_0" / "metrics.csv")
    # Epoch 0 is computed from the restored rows when the fit resumes, epoch 1 as usual.
    columns = [c for c in straight_rows.columns if c.endswith(LAYERS)] + ["epoch", "step"]
    pd.testing.assert_frame_equal(resumed_rows[columns], straight_rows[columns])
