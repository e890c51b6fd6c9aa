"""The Lightning callback, with the real ``lightning`` package on the CPU.

References are independent of delve: the LightningModule keeps a copy of
every layer output it produced (outside the sanity check), and numpy computes
the statistics of those rows (conftest's ``ref``); logged values are read back
from a CSVLogger file with pandas and from TensorBoard event files with
tensorboard's EventAccumulator. The two-rank ``ddp_spawn`` fit is compared
with one process on all the data. Resuming is in
test_integration_lightning_resume.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger  # noqa: E402
from lightning_helpers import (  # noqa: E402
    LAYERS,
    STATS,
    Net,
    assert_values,
    expected_values,
    loader,
    make_data,
    metrics_rows,
    new_net,
    tracked_hooks,
    trainer,
)
from probe_reference import ridge_probe  # noqa: E402

from delve import SaturationTracker  # noqa: E402
from delve.integrations.lightning import SaturationCallback  # noqa: E402


@contextlib.contextmanager
def lightning_messages():
    """What Lightning's own logger says meanwhile (it does not propagate to the root logger)."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models are tiny: on a shared CPU, one intra-op thread is about ten times faster than several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_logs_every_epoch_to_every_logger_as_numpy_computes_it(tmp_path, ref) -> None:
    x, y = make_data()
    net = new_net()
    callback = SaturationCallback(stats=STATS)
    loggers = [CSVLogger(tmp_path, name="csv", version=0), TensorBoardLogger(tmp_path, name="tb", version=0)]
    fit = trainer(tmp_path, [callback], logger=loggers, num_sanity_val_steps=2)
    fit.fit(net, loader(x, y, 8), loader(x[:24], y[:24], 6))

    rows = metrics_rows(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert rows["epoch"].tolist() == [0, 1]
    for epoch in (0, 1):
        # The sanity-check batches (two of the validation batches) are not in the eval statistics.
        assert_values(rows.loc[epoch], expected_values(net, epoch, ref))
    # Arrays never reach the loggers; every logged name is a scalar statistic.
    assert {c for c in rows.columns if c.endswith(LAYERS)} == set(expected_values(net, 0, ref))

    # Same step as Lightning's own epoch-level metrics (the last batch of the epoch).
    frame = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    val_steps = frame.loc[frame["val_loss"].notna(), "step"].tolist()
    assert rows["step"].tolist() == val_steps == [5, 11]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    for name in ("train-covariance-trace_fc", "eval-intrinsic-dimensionality_out"):
        scalars = events.Scalars(name)
        assert [event.step for event in scalars] == [5, 11]
        for epoch, event in enumerate(scalars):
            assert event.value == pytest.approx(expected_values(net, epoch, ref)[name], rel=1e-6)

    assert_values(callback.last_values, expected_values(net, 1, ref), rtol=1e-12)
    # delve's own writers stayed silent; the hooks are gone.
    assert sorted(p.name for p in tmp_path.rglob("*.csv")) == ["metrics.csv"]
    assert tracked_hooks(net) == 0


def test_save_to_also_writes_delve_files_in_the_log_folder(tmp_path, ref) -> None:
    x, y = make_data()
    net = new_net()
    callback = SaturationCallback(save_to=["csv"], stats=["lsat", "trc", "cov"], prefix="delve/")
    fit = trainer(tmp_path, [callback], logger=CSVLogger(tmp_path, name="csv", version=0), max_epochs=1)
    fit.fit(net, loader(x, y, 8), loader(x[:12], y[:12], 6))

    delve_csv = pd.read_csv(tmp_path / "csv" / "version_0" / "delve.csv", sep=";", index_col=0)
    logged = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    logged = logged[logged["delve/train-saturation_fc"].notna()].iloc[0]
    expected = expected_values(net, 0, ref)
    for name in ("train-covariance-trace_fc", "eval-covariance-trace_out", "train-saturation_out"):
        assert delve_csv.loc[0, name] == pytest.approx(expected[name], rel=1e-10)
        assert logged[f"delve/{name}"] == pytest.approx(expected[name], rel=1e-10)
    # The covariance matrix went to delve's writers and last_values, never to the logger.
    fc_rows = np.concatenate(net.captured[(0, "train")]["fc"])
    np.testing.assert_allclose(callback.last_values["train-covariance-matrix_fc"], ref.cov(fc_rows), rtol=1e-10)
    assert not any("covariance-matrix" in column for column in logged.index)


def test_a_fit_without_validation_still_computes_every_epoch(tmp_path, ref) -> None:
    x, y = make_data()
    for options in ({}, {"limit_val_batches": 0}):
        net = new_net()
        callback = SaturationCallback(stats=STATS)
        csv = CSVLogger(tmp_path, name="noval", version=len(options))
        fit = trainer(tmp_path, [callback], logger=csv, max_epochs=3, **options)
        val = loader(x[:12], y[:12], 6) if options else None
        fit.fit(net, loader(x, y, 16), val)
        rows = metrics_rows(tmp_path / "noval" / f"version_{len(options)}" / "metrics.csv")
        assert rows["epoch"].tolist() == [0, 1, 2]
        for epoch in range(3):
            assert_values(rows.loc[epoch], expected_values(net, epoch, ref, modes=("train",)))
        assert not any(column.startswith("eval-") for column in rows.columns)


def test_bad_arguments_fail_before_any_training(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"accepted keys:.*lsat"):
        SaturationCallback(stats=["lsat", "entropy"])
    with pytest.raises(ValueError, match="sat_threshold"):
        SaturationCallback(sat_threshold=1.5)
    with pytest.raises(ValueError, match="modules"):
        SaturationCallback(modules=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="stat_threshold"):
        SaturationCallback(stat_threshold=0.9)
    # A layer filter can only be checked against the model: in setup, before the first batch.
    x, y = make_data()
    net = new_net()
    with pytest.raises(ValueError, match="layer_filter"):
        trainer(tmp_path, [SaturationCallback(layer_filter="encoder.*")]).fit(net, loader(x, y, 8))
    assert net.training_batches == 0
    assert tracked_hooks(net) == 0


class Failing(Net):
    def training_step(self, batch, batch_index):
        if batch_index == 2:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_index)


def test_a_failing_fit_removes_the_hooks(tmp_path) -> None:
    x, y = make_data()
    torch.manual_seed(11)
    net = Failing()
    callback = SaturationCallback()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [callback]).fit(net, loader(x, y, 8))
    assert tracked_hooks(net) == 0
    assert callback.tracker is not None and not callback.tracker.is_recording()


def test_two_callbacks_keep_separate_checkpoint_states() -> None:
    assert SaturationCallback(stats=["lsat"]).state_key != SaturationCallback(stats=["trc"]).state_key


# ----------------------------------------------------------------------------- DDP
class RankLogger(Logger):
    """Not rank-zero-only, unlike Lightning's loggers: a file per rank shows which ranks logged."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    @property
    def name(self) -> str:
        return "ranks"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        return None

    def log_metrics(self, metrics, step=None) -> None:
        if not any(name.endswith(LAYERS) for name in metrics):
            return
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with open(os.path.join(self.folder, f"rank{rank}.jsonl"), "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


class EveryOtherSample(torch.utils.data.Sampler):
    """Rank r of w takes samples r, r + w, r + 2w... in order (Lightning's own sampler would shuffle)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _rank_and_world(self) -> tuple[int, int]:
        if torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._rank_and_world()
        return iter(range(rank, self.size, world))

    def __len__(self) -> int:
        return self.size // self._rank_and_world()[1]


def sharded_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EveryOtherSample(len(x)))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()), reason="needs gloo"
)
def test_ddp_spawn_two_ranks_log_once_what_one_process_sees_on_all_the_data(tmp_path) -> None:
    x, y = make_data(n=48)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=1)
    fit = trainer(
        tmp_path,
        [SaturationCallback(stats=STATS, savefile=str(tmp_path / "delve-ddp" / "run")), saver],
        logger=RankLogger(str(tmp_path / "ddp")),
        strategy="ddp_spawn",
        devices=2,
        enable_checkpointing=True,
        use_distributed_sampler=False,
    )
    # Each rank gets every other sample: 4 per step and rank.
    fit.fit(new_net(), sharded_loader(x, y, 4), sharded_loader(x[:24], y[:24], 3))
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["rank0.jsonl"]
    ddp = read_jsonl(tmp_path / "ddp" / "rank0.jsonl")

    # One process, each step's batch being the two ranks' batches together.
    single = trainer(tmp_path, [SaturationCallback(stats=STATS)], logger=RankLogger(str(tmp_path / "one")))
    single.fit(new_net(), loader(x, y, 8), loader(x[:24], y[:24], 6))
    one = read_jsonl(tmp_path / "one" / "rank0.jsonl")

    assert [record["step"] for record in ddp] == [record["step"] for record in one] == [5, 11]
    for ddp_record, one_record in zip(ddp, one):
        assert set(ddp_record) == set(one_record)
        for name, value in one_record.items():
            assert ddp_record[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
    # delve's writers wrote once, on rank zero.
    delve_csv = pd.read_csv(tmp_path / "delve-ddp" / "run.csv", sep=";", index_col=0)
    assert delve_csv.loc[1, "train-covariance-trace_fc"] == pytest.approx(ddp[1]["train-covariance-trace_fc"])

    # A checkpoint after the first step holds both ranks' partial rows: rank r saw samples r, r+2, r+4, r+6.
    state = torch.load(tmp_path / "ckpt" / "epoch=0-step=1.ckpt", weights_only=True)
    ranks = next(value for key, value in state["callbacks"].items() if "SaturationCallback" in key)["ranks"]
    assert len(ranks) == 2
    first_net = new_net()
    for rank, rank_state in enumerate(ranks):
        tracker = SaturationTracker("r", modules=new_net(), stats=["trc"], nosave=True)
        tracker.load_state_dict(rank_state)
        with torch.no_grad():
            rows = first_net.fc(x[rank:8:2]).numpy()
        assert tracker.compute_saturations()["train-covariance-trace_fc"] == pytest.approx(
            float(np.trace(np.cov(rows, rowvar=False, bias=True))), rel=1e-10
        )
        tracker.close()


@pytest.mark.parametrize("classes", [False, True])
def test_probes_take_their_targets_from_the_batches(tmp_path, classes: bool) -> None:
    x, y = make_data()
    net = new_net()
    # Real targets: y of each (x, y) batch, by default. Classes: a function of the batch.
    targets = (lambda batch: (batch[0][:, 0] > 4.0).long()) if classes else None
    # The report is printed when fit ends, through Lightning's logger, unless report=False.
    callback = SaturationCallback(stats=["lsat", "probe"], targets=targets, report=not classes)
    with lightning_messages() as messages:
        trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=2).fit(
            net, loader(x, y, 8), loader(x[:24], y[:24], 6)
        )
    reports = [message for message in messages if message.startswith("delve report")]
    if classes:
        assert reports == []
    else:
        (report,) = reports
        lines = report.splitlines()
        assert lines[0] == "delve report, epoch 0: 2 layers, no findings"
        assert lines[1].split() == ["layer", "width", "saturation", "k", "bound"]  # no accuracy for real targets
        rows = [line.split() for line in lines[2:4]]
        assert [row[0] for row in rows] == list(LAYERS)
        for row, layer in zip(rows, LAYERS):
            assert float(row[4]) == pytest.approx(callback.last_values[f"train-saturation_{layer}"], abs=5.01e-3)
    train_t = (x[:, 0] > 4.0).long().numpy() if classes else y.numpy()
    eval_t = train_t[:24]
    for layer in LAYERS:
        features = {mode: np.concatenate(net.captured[(0, mode)][layer]) for mode in ("train", "eval")}
        expected = ridge_probe(features["train"], train_t, features["eval"], eval_t, classes)
        for name, value in expected.items():
            mode, stat = name.split("-")
            logged = f"{mode}-probe-{stat}_{layer}"
            assert callback.last_values[logged] == pytest.approx(value, rel=1e-7, abs=1e-9), logged
