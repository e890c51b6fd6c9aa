"""SaturationTracker: attach to a model, record its layers, compute, write, checkpoint, close.

The tracker orchestrates; each step lives in its own module: validation in
:mod:`delve.tracking.parameters`, layer discovery in :mod:`delve.capture.discovery`, the forward hooks
in :mod:`delve.capture.hooks`, per-layer state in :mod:`delve.engine.recorder`, the merge
over ranks in :mod:`delve.engine.sync`, the statistics in :mod:`delve.statistics.epoch`
and the output in :mod:`delve.writers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from .._compat.spellings import deprecated_alias
from ..capture.discovery import TrackedLayer, discover_layers
from ..capture.hooks import ForwardOrder, attach_hooks, module_device, reset_compiler_for
from ..common import ranks
from ..common.naming import RunRecord
from ..engine.layer_state import LayerState
from ..engine.recorder import LayerRecorders
from ..statistics.epoch import compute_statistics, describe_run, merge_over_ranks
from ..writers.registry import build_writer
from .checkpoint import Checkpointing
from .notices import Notices
from .parameters import TrackerConfig
from .savefiles import SavefileGuard

__all__ = ["SaturationTracker", "CheckLayerSat"]

logger = logging.getLogger("delve")


class SaturationTracker(Checkpointing):
    """Track the feature-space saturation of a network's layers during training.

    Forward hooks feed every tracked layer's output into a float64 running
    covariance, separately for training and evaluation mode (taken from
    ``module.training`` at forward time). :meth:`add_saturations`, called once
    per epoch, turns each covariance into the requested statistics, hands them
    to the writers and starts the next epoch. The model is never modified;
    :meth:`close` removes every hook.

    PARAMETERS

    Notes
    -----
    A batch holding NaN or Inf is left out whole, by every statistic of the
    layer, and counted as ``<mode>-nonfinite-batches_<layer>``. Threads,
    activation checkpointing, ``torch.compile`` and mixed precision are
    handled as the usage documentation describes.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from delve import SaturationTracker
    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
    ...     _ = model(torch.randn(64, 8))
    ...     values = tracker.add_saturations()
    >>> sorted(values)
    ['train-saturation_0', 'train-saturation_2']
    """

    # The arguments are declared once, in TrackerConfig: the signature and the parameter list come from there.
    __signature__ = TrackerConfig.signature()
    __doc__ = __doc__.replace("    PARAMETERS\n", TrackerConfig.parameters_doc() + "\n")  # type: ignore[union-attr]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = TrackerConfig.from_arguments(*args, **kwargs)
        if config.modules is None:
            raise ValueError("modules is required: a model, a list of modules or a dict of name -> module")
        self.config = config
        modules = config.modules
        self.layers: list[TrackedLayer] = discover_layers(
            modules, config.layer_filter, config.ignore_layer_names, config.include_conv
        )
        self.epoch = config.initial_epoch
        self.rank = ranks.get_rank(config.process_group)
        # Ranks other than write_rank build no writer at all, so they create no files.
        self.is_writer = config.write_rank is None or self.rank == config.write_rank
        if config.verbose:
            _enable_console_logging()

        self._settings = config.recording_settings()
        self._recorders = LayerRecorders({layer.name: layer.observer for layer in self.layers}, self._settings)
        self._layer_modules = {layer.name: layer.module for layer in self.layers}
        self._forward_order = ForwardOrder()
        self._recording = True
        self._closed = False
        self._notices = Notices(config.savefile)
        self._widths: dict[str, int] = {}  # each layer's d, from its first recorded forward pass
        self._descriptions = {layer.name: layer.description for layer in self.layers}

        writing = not config.nosave and self.is_writer
        self.writer = build_writer(config.save_to if writing else (), config.savefile, config.writer_args)
        # One open tracker per savefile, and no earlier run written over unless continued.
        self._savefile = SavefileGuard(self, config.savefile, self.writer.writers, config.initial_epoch > 0)
        self.writer.record_run(self.run_record)
        if config.initial_epoch > 0:
            self.writer.resume_from_saved_state(config.initial_epoch)
        elif config.append and (following := self._savefile.append()) is not None:
            self.epoch = following
            self.writer.resume_from_saved_state(following)
        self._handles = attach_hooks(self, self._layer_modules, self._recorders, self._forward_order)
        reset_compiler_for(modules)
        logger.info("delve tracks %d layers: %s", len(self.layers), ", ".join(self._recorders))

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if config is not None and name in TrackerConfig.__dataclass_fields__:
            return getattr(config, name)  # tracker.savefile, tracker.sat_threshold, ... read the config
        if name.startswith("add_") and "writer" in self.__dict__:
            # Other add_* calls (add_image, add_histogram, ...) go to the writers that have them.
            forward = self.writer.forwarded(name, self.epoch)
            if forward is not None:

                def checked(*args: Any, **kwargs: Any) -> None:
                    self._before_writing(f"{name}()")
                    forward(*args, **kwargs)

                return checked
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ------------------------------------------------------------- recording
    @property
    def stats(self) -> list[str]:
        """The statistic keys this tracker computes, 0.1.x spellings resolved."""
        return list(self.config.stats)

    @property
    def layer_names(self) -> list[str]:
        """Tracked layer names, in order of their first forward pass, then the rest."""
        seen = self._forward_order.names()
        return seen + [name for name in self._recorders if name not in self._forward_order]

    @property
    def run_record(self) -> RunRecord:
        """What this tracker logs: its layers and statistic names (given to every writer)."""
        config = self.config
        record = describe_run(list(self._recorders), config.stats, config.average_sat)
        widths = {name: self._widths[name] for name in self._recorders if name in self._widths}
        return replace(record, widths=widths, descriptions=dict(self._descriptions))

    def cost(self) -> pd.DataFrame:
        """The estimated cost of tracking each layer against training it, per batch.

        From the shapes of each layer's first recorded forward pass (before
        one: ``RuntimeError``), one row per layer seen so far, in forward
        order. ``overhead`` is tracking every row against training the layer
        (1.0 = 100 %), ``share`` its part of all tracking work; all columns:
        :meth:`delve.budget.cost_model.CostModel.frame`. Printed, the table
        shows percentages.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
        >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
        ...     _ = model(torch.randn(32, 16))
        ...     table = tracker.cost()
        >>> table[["layer", "rows", "features"]].values.tolist()
        [['0', 32, 64], ['2', 32, 4]]
        >>> print(table)
        layer rows features update training overhead share kept_rows kept_overhead
        0       32       64  66.6k    98.3k     389%   99%        32          389%
        2       32        4    320    24.6k      19%  1.2%        32           19%
        """
        table = self._settings.costs.frame(self.layer_names)
        if table.empty:
            raise RuntimeError(
                "tracker.cost() estimates each layer's cost from the shapes of its first recorded forward pass, "
                "and no tracked layer has recorded one yet: call it after the model's first batch"
            )
        return table

    @property
    def probes(self) -> bool:
        """Whether this tracker fits live probes (``"probe"`` in ``stats``): :meth:`set_targets` feeds them."""
        return self._settings.targets is not None

    def set_targets(self, targets: torch.Tensor | None, num_classes: int | None = None) -> None:
        """The targets of the samples in the forward passes that follow, for live probes (``stats=["probe"]``).

        They hold until the next call; ``set_targets(None)`` stops probing,
        and a forward pass without targets adds nothing to the probes. Class
        indices are an integer tensor of shape ``(N,)``; real values a float
        tensor of shape ``(N,)`` or ``(N, c)``. ``N`` is the number of samples
        of the batch, the first axis of the model's input and of a tracked
        layer's output: a forward pass whose layers see another number of
        samples raises ``ValueError`` naming both sizes.

        Parameters
        ----------
        targets : torch.Tensor or None
            This batch's targets.
        num_classes : int, optional
            The number of classes. Without it delve reads the largest index,
            which waits for targets on an accelerator (once per call).

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> tracker = SaturationTracker("run", modules=model, stats=["probe"], nosave=True)
        >>> x = torch.randn(64, 4)
        >>> tracker.set_targets((x[:, 0] > 0).long())
        >>> _ = model(x)
        >>> values = tracker.add_saturations()
        >>> 0.5 < values["train-probe-accuracy_0"] <= 1.0
        True
        >>> tracker.close()
        """
        slot = self._settings.targets
        if slot is None:
            raise ValueError("set_targets() feeds live probes: add 'probe' to stats= to use it")
        slot.set(targets, num_classes)

    def stop(self) -> None:
        """Pause recording; hooks stay in place but ignore forward passes."""
        self._recording = False

    def resume(self) -> None:
        """Resume recording after :meth:`stop`."""
        if self._closed:
            raise RuntimeError("this tracker is closed; create a new one to record again")
        self._recording = True

    def is_recording(self) -> bool:
        """Whether forward passes are currently recorded."""
        return self._recording

    def reset(self) -> None:
        """Empty every accumulator (done by :meth:`add_saturations` by default)."""
        self._recorders.reset()

    # ----------------------------------------------------------- computation
    def compute_saturations(self) -> dict[str, Any]:
        """The statistics recorded since the last reset, without logging them.

        Returns ``{"<mode>-<statistic>_<layer>": value}`` in forward order
        (floats or ints; ``cov`` and ``embed`` numpy arrays). Under
        ``torch.distributed`` every rank must call this, or
        :meth:`add_saturations`, at the same point: the ranks' accumulators
        are merged and every rank gets the same values.
        """
        return self._compute(self._recorders.take(reset=False))

    def add_saturations(self, save: bool = True) -> dict[str, Any]:
        """Compute, log and reset: call once per epoch; returns the values logged.

        Every requested statistic of every layer and mode that saw data since
        the last reset goes to the writers under the current epoch (``save``:
        they also write their files), then the accumulators start afresh
        unless ``reset_covariance=False``. Each layer's state is taken in one
        step under its lock, so a batch recorded by another thread counts in
        exactly one epoch; if a statistic raises, the epoch's rows are put back.
        """
        self._before_writing("add_saturations()")
        reset = self.config.reset_covariance
        taken = self._recorders.take(reset=reset)
        try:
            values = self._compute(taken, notify_empty=True)
        except BaseException:
            if reset:  # nothing is lost when a statistic fails: the epoch's rows go back
                self._recorders.give_back(taken)
            raise
        epoch = self.epoch
        record = self.run_record
        if record != self.writer.run_record:  # the first epoch brings the layers' widths
            self.writer.record_run(record)
        try:
            self.writer.write_epoch(values, epoch, save)
        finally:
            self.epoch += 1
            if not reset:
                self._recorders.restart_counters()
        logger.info("delve epoch %d: %d values logged", epoch, len(values))
        return values

    def _devices(self) -> dict[str, torch.device]:
        """Where each layer's state lives: ``device=``, else the layer's own device."""
        return {name: self.config.device or module_device(module) for name, module in self._layer_modules.items()}

    def _compute(self, taken: Mapping[str, Mapping[str, LayerState]], notify_empty: bool = False) -> dict[str, Any]:
        """The logged values of states taken off the recorders (no hook can change them any more)."""
        config = self.config
        states = merge_over_ranks(
            taken,
            self.layer_names,
            self._settings.states.new,
            config.process_group,
            self._devices(),
            sync=config.sync_ranks,
        )
        budgeted = config.max_overhead is not None
        logged = compute_statistics(
            states,
            config.stats,
            config.sat_threshold,
            config.layerwise_sat,
            config.average_sat,
            budgeted,
            config.statistic_options,
        )
        features = {state.layer: state.covariance.num_features for state in states if state.covariance.count}
        self._widths.update(features)  # type: ignore[arg-type]
        if self.is_writer or not config.sync_ranks:  # with merged ranks, the writing rank warns
            world = ranks.get_world_size(config.process_group) if config.sync_ranks else 1
            self._notices.epoch(logged, states, self._settings.costs, self.epoch, world, notify_empty)
        return {value.name: value.value for value in logged}

    # --------------------------------------------------------------- writers
    def add_scalar(self, name: str, value: float, **kwargs: Any) -> None:
        """Log a user scalar (loss, accuracy...) into the current epoch's row."""
        self._before_writing("add_scalar()")
        self.writer.add_scalar(name, _to_python(value), self.epoch, **kwargs)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, float], **kwargs: Any) -> None:
        """Log several user scalars named ``prefix + key``."""
        self._before_writing("add_scalars()")
        self.writer.add_scalars(prefix, {k: _to_python(v) for k, v in value_dict.items()}, self.epoch, **kwargs)

    def save(self) -> None:
        """Persist what the writers hold."""
        self.writer.save()

    def _before_writing(self, call: str) -> None:
        """Refuse a recording call on a closed tracker, and writing over an earlier run (checked once)."""
        if self._closed:
            raise RuntimeError(
                f"this SaturationTracker ({self.config.savefile!r}) is closed: {call} after close() would record "
                "nothing (close() removed its hooks and closed its writers); create a new tracker to go on"
            )
        self._savefile.before_writing()

    def close(self) -> None:
        """Remove every hook and close the writers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._recording = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        try:
            self.writer.close()
        finally:
            self._savefile.release(self)

    def __enter__(self) -> SaturationTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A tracker that is garbage-collected must not leave hooks behind.
        for handle in self.__dict__.get("_handles", ()):
            handle.remove()

    def __repr__(self) -> str:
        return (
            f"SaturationTracker(savefile={self.config.savefile!r}, layers={len(self._recorders)}, "
            f"stats={list(self.config.stats)}, epoch={self.epoch}, recording={self._recording})"
        )


#: The delve 0.1.x name, kept for old scripts; it warns when used.
CheckLayerSat = deprecated_alias(SaturationTracker, "CheckLayerSat")


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().numpy()
    return value


def _enable_console_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
