"""Hugging Face callback: layer saturation of a ``transformers.Trainer`` model in the Trainer's logs.

.. code-block:: python

    from transformers import Trainer
    from delve.integrations.huggingface import SaturationCallback

    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
                      callbacks=[SaturationCallback(stats=["lsat", "idim"])])
    trainer.train()

Needs ``pip install 'delve[huggingface]'``.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

try:
    import torch
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as _error:
    from ._common import missing_framework

    raise missing_framework(__name__, "transformers", "huggingface") from _error

from ..tracking.tracker import SaturationTracker
from ..writers.base import AbstractWriter
from ._common import (
    build_tracker,
    check_tracker_arguments,
    checkpoint_state,
    report_text,
    restore_checkpoint_state,
    scalar_metrics,
)

__all__ = ["SaturationCallback", "STATE_FILE"]

#: Name of the tracker state written into every Trainer checkpoint folder.
STATE_FILE = "delve_tracker.pt"


class SaturationCallback(TrainerCallback):
    """Track the saturation of a ``transformers.Trainer`` model's layers during ``train()``.

    At ``on_train_begin`` a :class:`~delve.SaturationTracker` is attached to
    the model (layer names are its qualified submodule names, ``.`` replaced
    by ``-``, e.g. ``bert-encoder-layer-0-attention-self-query``). Training
    batches are recorded as ``train``; the Trainer evaluates in eval mode, so
    evaluation batches are recorded as ``eval`` (except ``eval_on_start``,
    which is a sanity check). The statistics are computed at the end of
    every epoch, or every ``interval`` optimizer steps, after the evaluation
    that the Trainer runs at that point, and reported through ``Trainer.log``:

    * every scalar value, named ``<prefix><mode>-<statistic>_<layer>``, goes
      to ``trainer.state.log_history`` and to every ``report_to``
      integration (TensorBoard shows ``train/<name>``, as it does for every
      name without an ``eval_`` prefix) at the current ``global_step``;
    * with ``save_to`` or ``savefile`` given, delve's own writers (CSV, plots,
      NPY...) also write everything, arrays included;
    * :attr:`last_values` holds the full dictionary of the last computation;
    * when training ends, the report (:meth:`~delve.SaturationTracker.report`)
      is printed by the main process, as the Trainer prints its logs.

    The tracker state is saved in every checkpoint folder as
    :data:`STATE_FILE` (``torch.save``, loadable with ``weights_only=True``)
    and restored by ``trainer.train(resume_from_checkpoint=...)``, so a
    resumed run gives the statistics of an uninterrupted one. Under
    ``torch.distributed`` every rank records its own batches, the ranks are
    merged at each computation, and the main process writes the files. The
    hooks are removed at ``on_train_end``.

    With ``"probe"`` in ``stats``, the live probes' targets are the ``labels``
    the Trainer passes to the model (sequence classification and regression:
    one label per sequence). Token-level labels (token classification,
    language modelling) are not supported: those batches add no probe rows,
    and a warning says so once.

    Parameters
    ----------
    savefile : str, optional
        Path prefix of delve's own files. Given, delve's writers write
        (``save_to`` defaults to ``"csv"``).
    save_to : str, AbstractWriter or list of them, optional
        delve writers. Given without ``savefile``, files go to
        ``<output_dir>/delve``.
    stats : list of str
        Statistic keys; an unknown key raises ``ValueError`` here.
    interval : int or "logging_steps", optional
        Compute every this many optimizer steps instead of once per epoch;
        ``"logging_steps"`` follows the Trainer's ``logging_steps``. Steps
        left over at the end of training are computed at ``on_train_end``.
    prefix : str
        Put in front of every reported name, e.g. ``"delve/"``.
    report : bool
        Print the report when training ends.
    **tracker_kwargs
        Any other :class:`~delve.SaturationTracker` argument, checked here.
        ``modules`` and ``nosave`` are set by the callback.

    Attributes
    ----------
    tracker : SaturationTracker or None
        The tracker of the current (or last) training run.
    last_values : dict
        What the last ``add_saturations`` returned, arrays included.

    Notes
    -----
    A callback is handed no reference to the Trainer, and the Trainer calls
    user callbacks after its reporting integrations, so values added to the
    ``logs`` of ``on_log`` would never reach TensorBoard or W&B. The callback
    therefore finds the Trainer that calls it on the call stack when
    training begins and reports with its public ``log`` method, which every
    integration follows. Without a Trainer there (a custom loop calling the
    hooks), values go to ``state.log_history`` only and a warning says so.

    Examples
    --------
    >>> SaturationCallback(stats=["lsat", "nope"])
    Traceback (most recent call last):
    ...
    ValueError: ...

    >>> callback = SaturationCallback(stats=["lsat", "idim"])
    >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[callback])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(
        self,
        savefile: str | None = None,
        save_to: str | AbstractWriter | Sequence[str | AbstractWriter] | None = None,
        *,
        stats: Sequence[str] = ("lsat",),
        interval: int | str | None = None,
        prefix: str = "",
        report: bool = True,
        **tracker_kwargs: Any,
    ) -> None:
        if (
            interval is not None
            and interval != "logging_steps"
            and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1)
        ):
            raise ValueError(f"interval must be None, a positive int or 'logging_steps', got {interval!r}")
        check_tracker_arguments(type(self).__name__, savefile, save_to, stats, tracker_kwargs)
        self.savefile = savefile
        self.save_to = save_to
        self.stats = list(stats) if not isinstance(stats, str) else [stats]
        self.interval = interval
        self.prefix = str(prefix)
        self.report = bool(report)
        self.tracker_kwargs = dict(tracker_kwargs)
        self.tracker: SaturationTracker | None = None
        self.last_values: dict[str, Any] = {}
        self._trainer: weakref.ReferenceType[Trainer] | None = None
        self._steps: int | None = None
        # The epoch whose rows the accumulators hold, and whether it is still to be computed.
        self._fit_epoch: int | None = None
        self._epoch_open = False
        # A computation waits for the evaluation the Trainer runs right after this step or epoch.
        self._due = False
        self._paused = False
        self._warned_no_trainer = False
        self._labels_hook: torch.utils.hooks.RemovableHandle | None = None
        self._warned_token_labels = False

    # ------------------------------------------------------------ lifecycle
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ValueError(f"{type(self).__name__} needs the model: the Trainer passes it to on_train_begin")
        self._close_tracker()
        trainer, resume_from = _calling_trainer()
        self._trainer = weakref.ref(trainer) if trainer is not None else None
        self.tracker = build_tracker(
            model,
            self.savefile,
            self.save_to,
            self.stats,
            self.tracker_kwargs,
            default_savefile=lambda: os.path.join(args.output_dir, "delve"),
        )
        if self.tracker.probes:
            # The Trainer calls the model with keyword arguments: its labels are the probes' targets.
            self._labels_hook = model.register_forward_pre_hook(self._read_labels, with_kwargs=True)
        self._steps = state.logging_steps if self.interval == "logging_steps" else self.interval  # type: ignore[assignment]
        self.last_values = {}
        self._fit_epoch, self._epoch_open, self._due, self._paused = None, False, False, False
        if state.global_step > 0:
            self._restore(args, state, resume_from)
        # getattr: eval_on_start is recent (transformers 4.41).
        if getattr(args, "eval_on_start", False):
            self.tracker.stop()
            self._paused = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.tracker is None:
            return
        leftover = self._steps is not None and state.global_step % self._steps != 0
        if self._due or leftover:
            self._compute_and_report(state)
        text = report_text(self.tracker) if self.report and state.is_world_process_zero else None
        if text is not None:
            print(text)  # as the Trainer prints its logs (PrinterCallback)
        self._close_tracker()

    def _close_tracker(self) -> None:
        if self._labels_hook is not None:
            self._labels_hook.remove()
            self._labels_hook = None
        if self.tracker is not None:
            self.tracker.close()

    def _read_labels(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """The forward's ``labels`` as the probes' targets: one per sequence (classification or regression)."""
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.ndim > 1:
            if not self._warned_token_labels:
                self._warned_token_labels = True
                warnings.warn(
                    "delve: probes need one label per sequence; token-level labels (shape "
                    f"{tuple(labels.shape)}) are not supported, so these batches add no probe rows",
                    UserWarning,
                    stacklevel=2,
                )
            labels = None
        self.tracker.set_targets(labels if isinstance(labels, torch.Tensor) else None)  # type: ignore[union-attr]

    # ------------------------------------------------------------ recording
    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.tracker is None:
            return
        if self._paused:
            self.tracker.resume()
            self._paused = False
        epoch = math.floor(state.epoch or 0)
        if self._steps is None and self._epoch_open and self._fit_epoch is not None and self._fit_epoch < epoch:
            # Restored from a checkpoint saved at the last step of an epoch, before on_epoch_end: the Trainer
            # resumes with the next epoch, so the restored one is completed here.
            self._compute_and_report(state)
        self._fit_epoch, self._epoch_open = epoch, True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.tracker is not None and self._steps is not None and state.global_step % self._steps == 0:
            self._compute_after_evaluation(state, control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.tracker is not None and self._steps is None:
            self._compute_after_evaluation(state, control)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.tracker is not None and self._due:
            self._compute_and_report(state)

    def _compute_after_evaluation(self, state: TrainerState, control: TrainerControl) -> None:
        # DefaultFlowCallback, always first, has decided by now whether an evaluation follows.
        if control.should_evaluate:
            self._due = True
        else:
            self._compute_and_report(state)

    def _compute_and_report(self, state: TrainerState) -> None:
        assert self.tracker is not None
        # Every rank: the accumulators are merged by collectives.
        values = self.tracker.add_saturations()
        self._due = False
        self._epoch_open = False
        self.last_values = values
        metrics = scalar_metrics(values, self.prefix)
        if not metrics:
            return
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None:
            trainer.log(dict(metrics))
            return
        state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})
        if not self._warned_no_trainer:
            self._warned_no_trainer = True
            warnings.warn(
                f"{type(self).__name__}: no transformers.Trainer on the call stack; delve's values go to "
                "state.log_history only, not to the report_to integrations",
                RuntimeWarning,
                stacklevel=3,
            )

    # ---------------------------------------------------------- checkpoints
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.tracker is None:
            return
        # Every rank takes part: the ranks' partial rows are gathered to the main process.
        payload = checkpoint_state(
            self.tracker, fit_epoch=self._fit_epoch, epoch_open=self._epoch_open, global_step=state.global_step
        )
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(
                f"{type(self).__name__}: checkpoint folder {folder} not found; the tracker state was not saved",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        _save_atomically(payload, os.path.join(folder, STATE_FILE))

    def _restore(self, args: TrainingArguments, state: TrainerState, resume_from: object) -> None:
        assert self.tracker is not None
        folders = [resume_from] if isinstance(resume_from, (str, os.PathLike)) else []
        folders.append(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
        for folder in folders:
            path = os.path.join(folder, STATE_FILE)
            if os.path.isfile(path):
                payload = torch.load(path, map_location="cpu", weights_only=True)
                restore_checkpoint_state(self.tracker, payload)
                fit_epoch = payload.get("fit_epoch")
                self._fit_epoch = None if fit_epoch is None else int(fit_epoch)
                self._epoch_open = bool(payload.get("epoch_open", False))
                return
        warnings.warn(
            f"{type(self).__name__}: training resumes at step {state.global_step} but no {STATE_FILE} was found "
            f"in {', '.join(map(str, folders))}; delve's statistics restart from empty accumulators",
            RuntimeWarning,
            stacklevel=3,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(stats={self.stats}, interval={self.interval!r}, "
            f"savefile={self.savefile!r}, save_to={self.save_to!r})"
        )


def _calling_trainer() -> tuple[Trainer | None, object]:
    """The Trainer whose callback handler is running this hook, and the checkpoint it resumes from.

    The innermost frame whose ``self`` is a Trainer is its training loop,
    whose ``resume_from_checkpoint`` argument names the folder being resumed.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer):
                return owner, frame.f_locals.get("resume_from_checkpoint")
            frame = frame.f_back
        return None, None
    finally:
        # Frames reference their locals; dropping them avoids a reference cycle.
        del frame


def _save_atomically(payload: dict[str, Any], path: str) -> None:
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=".delve_tracker.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
