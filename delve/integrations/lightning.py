"""Lightning callback: layer saturation of a ``LightningModule`` in every logger of the trainer.

.. code-block:: python

    import lightning as L
    from delve.integrations.lightning import SaturationCallback

    trainer = L.Trainer(callbacks=[SaturationCallback(stats=["lsat", "idim"])])
    trainer.fit(model, train_loader, val_loader)

Needs ``pip install 'delve[lightning]'``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

try:
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as _error:
    from ._common import missing_framework

    raise missing_framework(__name__, "lightning", "lightning") from _error

from ..tracking.tracker import SaturationTracker
from ..writers.base import AbstractWriter
from ._common import (
    batch_targets,
    build_tracker,
    check_tracker_arguments,
    checkpoint_state,
    report_text,
    restore_checkpoint_state,
    scalar_metrics,
)

__all__ = ["SaturationCallback"]


class SaturationCallback(Callback):
    """Track the saturation of a ``LightningModule``'s layers during ``Trainer.fit``.

    In ``setup`` a :class:`~delve.SaturationTracker` is attached to the
    LightningModule (layer names are its qualified submodule names, ``.``
    replaced by ``-``). Training batches are recorded as ``train``,
    validation batches as ``eval`` (Lightning switches the module to eval
    mode); the sanity-check validation before training is not recorded. At
    the end of every training epoch, after that epoch's validation, the
    statistics are computed and logged:

    * every scalar value, named ``<prefix><mode>-<statistic>_<layer>`` (for
      example ``train-saturation_encoder-0``), goes to each of
      ``trainer.loggers`` through ``log_metrics``, together with ``epoch``,
      at the step Lightning logs its own epoch-level metrics under (the step
      of the epoch's last training batch, ``trainer.global_step - 1`` with one
      optimizer), so they share a row with ``val_loss`` in a ``CSVLogger``;
    * with ``save_to`` or ``savefile`` given, delve's own writers (CSV, plots,
      NPY, TensorBoard...) also write everything, arrays included, indexed
      by epoch;
    * :attr:`last_values` holds the full dictionary of the last epoch.

    When ``fit`` ends, the report (:meth:`~delve.SaturationTracker.report`:
    the layers, then the findings in words) is printed through Lightning's
    own logger, as Lightning prints its model summary (``report=False``: not).

    Under DDP every rank records its own batches, the ranks are merged
    exactly at the end of each epoch, and only global rank zero logs and
    writes. The tracker state travels in Lightning checkpoints, mid-epoch
    ones included, so ``trainer.fit(..., ckpt_path=...)`` continues the
    statistics where the checkpoint left them. Hooks are removed in
    ``teardown``.

    Parameters
    ----------
    savefile : str, optional
        Path prefix of delve's own files. Given, delve's writers write
        (``save_to`` defaults to ``"csv"``).
    save_to : str, AbstractWriter or list of them, optional
        delve writers (``"csv"``, ``"plot"``, ``"npy"``, ``"tensorboard"``,
        writer instances). Given without ``savefile``, files go to
        ``<trainer.log_dir>/delve`` (``default_root_dir`` without a logger).
    stats : list of str
        Statistic keys (``lsat``, ``idim``, ``cov``, ``trc``...); an unknown
        key raises ``ValueError`` here, before any training.
    prefix : str
        Put in front of every name sent to the loggers, e.g. ``"delve/"``.
    targets : callable, optional
        With ``"probe"`` in ``stats``: ``targets(batch) -> Tensor or None``,
        the targets of a training or validation batch for the live probes.
        By default ``y`` of an ``(x, y)`` batch, or a dict batch's
        ``labels`` (:func:`~delve.integrations._common.batch_targets`).
    report : bool
        Print the report when ``fit`` ends (on global rank zero).
    **tracker_kwargs
        Any other :class:`~delve.SaturationTracker` argument
        (``layer_filter``, ``sat_threshold``, ``conv_method``,
        ``max_samples``...), checked here. ``modules`` and ``nosave`` are set
        by the callback.

    Attributes
    ----------
    tracker : SaturationTracker or None
        The tracker of the current (or last) fit; ``None`` before ``setup``
        and, with ``strategy="ddp_spawn"``, in the launching process.
    last_values : dict
        What the last ``add_saturations`` returned, arrays included.

    Examples
    --------
    Unknown statistic keys are refused at once:

    >>> SaturationCallback(stats=["lsat", "nope"])
    Traceback (most recent call last):
    ...
    ValueError: ...

    >>> trainer = Trainer(callbacks=[SaturationCallback(stats=["lsat", "idim"])])  # doctest: +SKIP
    >>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        savefile: str | None = None,
        save_to: str | AbstractWriter | Sequence[str | AbstractWriter] | None = None,
        *,
        stats: Sequence[str] = ("lsat",),
        prefix: str = "",
        targets: Callable[[Any], torch.Tensor | None] | None = None,
        report: bool = True,
        **tracker_kwargs: Any,
    ) -> None:
        check_tracker_arguments(type(self).__name__, savefile, save_to, stats, tracker_kwargs)
        if targets is not None and not callable(targets):
            raise ValueError(f"targets must be a function batch -> tensor or None, got {type(targets).__name__}")
        self.targets = targets or batch_targets
        self.savefile = savefile
        self.save_to = save_to
        self.stats = list(stats) if not isinstance(stats, str) else [stats]
        self.prefix = str(prefix)
        self.report = bool(report)
        self.tracker_kwargs = dict(tracker_kwargs)
        self.tracker: SaturationTracker | None = None
        self.last_values: dict[str, Any] = {}
        self._restored: dict[str, Any] | None = None
        # The training epoch whose rows the accumulators hold, and whether it is still to be computed.
        self._fit_epoch: int | None = None
        self._epoch_open = False
        self._paused = False

    @property
    def state_key(self) -> str:
        # Two callbacks with different settings keep separate states in one checkpoint.
        return self._generate_state_key(savefile=self.savefile, stats=tuple(self.stats), prefix=self.prefix)

    # ------------------------------------------------------------ lifecycle
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._close_tracker()
        kwargs = dict(self.tracker_kwargs)
        # A second fit of the same trainer continues its epoch count; delve's writers keep the earlier rows.
        kwargs.setdefault("initial_epoch", trainer.current_epoch)
        # Built here, not in __init__: the process group of DDP exists by now, and every rank builds its own.
        self.tracker = build_tracker(
            pl_module,
            self.savefile,
            self.save_to,
            self.stats,
            kwargs,
            default_savefile=lambda: os.path.join(trainer.log_dir or trainer.default_root_dir, "delve"),
        )
        self.last_values = {}
        self._fit_epoch, self._epoch_open, self._paused = None, False, False
        if self._restored is not None:
            self._apply_restored()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        text = report_text(self.tracker) if self.report and self.tracker is not None else None
        if text is not None:
            rank_zero_info(text)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close_tracker()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._close_tracker()

    def _close_tracker(self) -> None:
        # The closed tracker stays reachable: its state still goes into a checkpoint saved after fit.
        if self.tracker is not None:
            self.tracker.close()

    # ------------------------------------------------------------ recording
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tracker is not None and self.tracker.is_recording():
            self.tracker.stop()
            self._paused = True

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._paused and self.tracker is not None:
            self.tracker.resume()
            self._paused = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._set_targets(batch)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._set_targets(batch)

    def _set_targets(self, batch: Any) -> None:
        if self.tracker is not None and self.tracker.probes:
            self.tracker.set_targets(self.targets(batch))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tracker is None:
            return
        if self._epoch_open and self._fit_epoch is not None and self._fit_epoch < trainer.current_epoch:
            # A checkpoint taken at the end of an epoch, before this callback computed it: Lightning
            # resumes at the next epoch, so the restored epoch is completed here instead.
            self._compute_and_log(trainer)
        self._fit_epoch = trainer.current_epoch
        self._epoch_open = True

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.tracker is not None:
            self._compute_and_log(trainer)

    def _compute_and_log(self, trainer: Trainer) -> None:
        assert self.tracker is not None
        # Every rank: the accumulators are merged by collectives.
        values = self.tracker.add_saturations()
        epoch = self._fit_epoch if self._fit_epoch is not None else trainer.current_epoch
        self._epoch_open = False
        self.last_values = values
        if not trainer.is_global_zero or not trainer.loggers:
            return
        metrics: dict[str, float] = {**scalar_metrics(values, self.prefix), "epoch": epoch}
        step = _epoch_metrics_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The tracker state of every rank, saved in Lightning checkpoints.

        Lightning builds a checkpoint on every rank and writes rank zero's; the
        ranks' states are gathered to rank zero here (a collective, as
        checkpointing already is), so a mid-epoch checkpoint holds every
        rank's partial rows.
        """
        if self.tracker is None:
            # The launching process of ddp_spawn never tracked anything; keep what it was given.
            return dict(self._restored) if self._restored is not None else {}
        return checkpoint_state(self.tracker, fit_epoch=self._fit_epoch, epoch_open=self._epoch_open)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` now, or at ``setup`` if the tracker does not exist yet."""
        if not state_dict:
            return
        self._restored = dict(state_dict)
        if self.tracker is not None:
            self._apply_restored()

    def _apply_restored(self) -> None:
        assert self.tracker is not None and self._restored is not None
        restore_checkpoint_state(self.tracker, self._restored)
        fit_epoch = self._restored.get("fit_epoch")
        self._fit_epoch = None if fit_epoch is None else int(fit_epoch)
        self._epoch_open = bool(self._restored.get("epoch_open", False))
        self._restored = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stats={self.stats}, savefile={self.savefile!r}, save_to={self.save_to!r})"


def _epoch_metrics_step(trainer: Trainer) -> int:
    """The step Lightning logs epoch-level metrics under: that of the epoch's last training batch.

    Lightning counts it in the training loop's ``_batches_that_stepped``
    (LearningRateMonitor and DeviceStatsMonitor use the same counter);
    ``global_step`` is the fallback, equal to it with one optimizer.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    stepped = getattr(loop, "_batches_that_stepped", None)
    if not isinstance(stepped, int):
        stepped = trainer.global_step
    return max(stepped - 1, 0)
