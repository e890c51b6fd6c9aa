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
from typing import Any

import pandas as pd
import torch

from .._compat.spellings import deprecated_alias
from ..common import ranks
from ..common.naming import RunRecord
from ..engine.layer_state import LayerState
from ..statistics.epoch import compute_statistics
from .checkpoint import pack_state
from .notices import Notices
from .parameters import TrackerConfig
from .recording import ModelRecording
from .reporting import receptive_fields, report
from .run_writing import RunWriting
from .settings import statistic_options

__all__ = ["SaturationTracker", "CheckLayerSat"]

logger = logging.getLogger("delve")


class SaturationTracker:
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
        if config.verbose:
            _enable_console_logging()
        self._active = True
        self._notices = Notices(config.savefile)
        self._recording = ModelRecording(self, config)
        self.layers = self._recording.layers
        names = [layer.name for layer in self.layers]
        descriptions = {layer.name: layer.description for layer in self.layers}
        self._run = RunWriting(self, config, names, descriptions, self._recording.facts.facts)
        logger.info("delve tracks %d layers: %s", len(names), ", ".join(names))

    @property
    def epoch(self) -> int:
        """The epoch the next :meth:`add_saturations` logs."""
        return self._run.epoch

    @property
    def writer(self) -> Any:
        """The composite of this tracker's writers (none on ranks that do not write)."""
        return self._run.writer

    @property
    def is_writer(self) -> bool:
        """Whether this process writes (``write_rank``)."""
        return self._run.is_writer

    def __getattr__(self, name: str) -> Any:
        config = self.__dict__.get("config")
        if config is not None and name in TrackerConfig.__dataclass_fields__:
            return getattr(config, name)  # tracker.savefile, tracker.sat_threshold, ... read the config
        run = self.__dict__.get("_run")
        if name.startswith("add_") and run is not None:
            # Other add_* calls (add_image, add_histogram, ...) go to the writers that have them.
            forward = run.forwarded(name)
            if forward is not None:
                return forward
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # ------------------------------------------------------------- recording
    @property
    def stats(self) -> list[str]:
        """The statistic keys this tracker computes, 0.1.x spellings resolved."""
        return list(self.config.stats)

    @property
    def layer_names(self) -> list[str]:
        """Tracked layer names, in order of their first forward pass, then the rest."""
        return self._recording.layer_names

    @property
    def run_record(self) -> RunRecord:
        """What this tracker logs: its layers and statistic names (given to every writer)."""
        return self._run.record

    def cost(self) -> pd.DataFrame:
        """The estimated cost of tracking each layer against training it, per batch (a table).

        From the shapes of each layer's first recorded forward pass (before
        one: ``RuntimeError``), in forward order: ``overhead`` is tracking
        every row against training the layer (1.0 = 100 %), ``route`` how its
        covariance is fed; all columns: :meth:`delve.budget.cost_model.CostModel.frame`.

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
        ...     _ = model(torch.randn(32, 16))
        ...     print(tracker.cost())
        layer rows features update training overhead share kept_rows kept_overhead route
        0       32       64  66.6k    98.3k     389%   99%        32          389%   out
        2       32        4    320    24.6k      19%  1.2%        32           19%   out
        """
        return self._recording.cost()

    # The verdicts (tracking/reporting.py): receptive fields at the first input's shape, and the findings.
    receptive_fields = receptive_fields
    report = report

    @property
    def probes(self) -> bool:
        """Whether this tracker fits live probes (``"probe"`` in ``stats``): :meth:`set_targets` feeds them."""
        return self._recording.probes

    def set_targets(self, targets: torch.Tensor | None, num_classes: int | None = None) -> None:
        """The targets of the samples of the forward passes that follow, for live probes (``stats=["probe"]``).

        They hold until the next call; ``None`` stops probing. Class indices:
        an integer tensor of shape ``(N,)``; real values: ``(N,)`` or ``(N, c)``
        floats, ``N`` being the batch's samples (a layer seeing another number
        raises ``ValueError`` naming both). ``num_classes`` spares reading the
        largest index (which waits for targets on an accelerator).

        Examples
        --------
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> tracker = SaturationTracker("run", modules=model, stats=["probe"], nosave=True)
        >>> x = torch.randn(64, 4)
        >>> tracker.set_targets((x[:, 0] > 0).long()); _ = model(x)
        >>> 0.5 < tracker.add_saturations()["train-probe-accuracy_0"] <= 1.0
        True
        >>> tracker.close()
        """
        self._recording.set_targets(targets, num_classes)

    def stop(self) -> None:
        """Pause recording; hooks stay in place but ignore forward passes."""
        self._active = False

    def resume(self) -> None:
        """Resume recording after :meth:`stop`."""
        if self._run.closed:
            raise RuntimeError("this tracker is closed; create a new one to record again")
        self._active = True

    def is_recording(self) -> bool:
        """Whether forward passes are currently recorded."""
        return self._active

    def reset(self) -> None:
        """Empty every accumulator (done by :meth:`add_saturations` by default)."""
        self._recording.recorders.reset()

    # ----------------------------------------------------------- computation
    def compute_saturations(self) -> dict[str, Any]:
        """The statistics recorded since the last reset, without logging them.

        Returns ``{"<mode>-<statistic>_<layer>": value}`` in forward order
        (floats or ints; ``cov`` and ``embed`` numpy arrays). Under
        ``torch.distributed`` every rank must call this, or
        :meth:`add_saturations`, at the same point: the ranks' accumulators
        are merged and every rank gets the same values.
        """
        return self._compute(self._recording.recorders.take(reset=False))

    def add_saturations(self, save: bool = True) -> dict[str, Any]:
        """Compute, log and reset: call once per epoch; returns the values logged.

        Every requested statistic of every layer and mode that saw data since
        the last reset goes to the writers under the current epoch (``save``:
        they also write their files), then the accumulators start afresh
        unless ``reset_covariance=False``. Each layer's state is taken in one
        step under its lock, so a batch recorded by another thread counts in
        exactly one epoch; if a statistic raises, the epoch's rows are put back.
        """
        self._run.check_open("add_saturations()")
        reset = self.config.reset_covariance
        recorders = self._recording.recorders
        taken = recorders.take(reset=reset)
        try:
            values = self._compute(taken, notify_empty=True)
        except BaseException:
            if reset:  # nothing is lost when a statistic fails: the epoch's rows go back
                recorders.give_back(taken)
            raise
        try:
            self._run.write_epoch(values, save)
        finally:
            if not reset:
                recorders.restart_counters()
        return values

    def _compute(self, taken: Mapping[str, Mapping[str, LayerState]], notify_empty: bool = False) -> dict[str, Any]:
        """The logged values of states taken off the recorders (no hook can change them any more)."""
        config = self.config
        states = self._recording.states(taken)
        budgeted = config.max_overhead is not None
        logged = compute_statistics(
            states,
            config.stats,
            config.sat_threshold,
            config.layerwise_sat,
            config.average_sat,
            budgeted,
            statistic_options(config),
        )
        features = {state.layer: state.covariance.num_features for state in states if state.covariance.count}
        self._run.widths.update(features)  # type: ignore[arg-type]
        if self.is_writer or not config.sync_ranks:  # with merged ranks, the writing rank warns
            world = ranks.get_world_size(config.process_group) if config.sync_ranks else 1
            self._notices.epoch(logged, states, self._recording.settings.costs, self.epoch, world, notify_empty)
        return {value.name: value.value for value in logged}

    # --------------------------------------------------------------- writers
    def add_scalar(self, name: str, value: float, **kwargs: Any) -> None:
        """Log a user scalar (loss, accuracy...) into the current epoch's row."""
        self._run.add_scalar(name, value, **kwargs)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, float], **kwargs: Any) -> None:
        """Log several user scalars named ``prefix + key``."""
        self._run.add_scalars(prefix, value_dict, **kwargs)

    def save(self) -> None:
        """Persist what the writers hold."""
        self.writer.save()

    def close(self) -> None:
        """Remove every hook and close the writers. Safe to call twice."""
        if self._run.closed:
            return
        self._active = False
        self._recording.detach()
        self._run.close(self)

    def __enter__(self) -> SaturationTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A tracker that is garbage-collected must not leave hooks behind.
        recording = self.__dict__.get("_recording")
        if recording is not None:
            recording.detach()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this tracker exactly where it stands (:mod:`delve.tracking.checkpoint`).

        Per layer and mode its accumulators and counters, the epoch, the
        forward order and the tracker's random streams; tensors and plain
        types only, so it loads with ``torch.load(path, weights_only=True)``.
        Under ``torch.distributed`` each rank's state holds its own rows.

        Examples
        --------
        >>> import torch
        >>> tracker = SaturationTracker("run", modules=torch.nn.Linear(4, 3), nosave=True)
        >>> sorted(tracker.state_dict())
        ['epoch', 'format', 'forward_order', 'layers']
        >>> tracker.close()
        """
        return {**pack_state(self.epoch), **self._recording.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, mid-epoch or between epochs.

        Layer names must match this tracker's. The state goes to ``device=``
        (or each layer's device) whatever its ``map_location``. A fresh
        tracker that loads a later epoch resumes its writers there, so the
        rows already on disk are kept.

        Raises
        ------
        ValueError
            If the state is not a tracker state, or holds layers this tracker
            does not track.
        """
        self._recording.load_state_dict(state)
        self._run.continue_at(int(state["epoch"]))

    def __repr__(self) -> str:
        return (
            f"SaturationTracker(savefile={self.config.savefile!r}, layers={len(self.layers)}, "
            f"stats={list(self.config.stats)}, epoch={self.epoch}, recording={self._active})"
        )


#: The delve 0.1.x name, kept for old scripts; it warns when used.
CheckLayerSat = deprecated_alias(SaturationTracker, "CheckLayerSat")


def _enable_console_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
