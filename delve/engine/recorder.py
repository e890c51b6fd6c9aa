"""The forward hook's hot path: one layer's batch into its accumulators.

Per recorded forward pass, in this order and each once: the observation view
of the output (:mod:`delve.capture.observation`), the state's device, the
epoch's ``max_samples``, the rows the budget keeps (:mod:`delve.budget`), and
the layer's :class:`~delve.engine.layer_state.LayerState`, whose covariance
judges the batch before its other accumulators see it. Nothing here reads a
value back from the device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..budget.cost_model import CostModel
from ..budget.layer_cost import layer_cost, relative_cost, training_rate
from ..budget.row_sampler import RowSampler
from ..capture.observation import ObservationConfig, ObserverEntry, observe
from ..common.torch_features import autocast_enabled
from .accumulator import Batch
from .layer_state import LayerState, StateSpec
from .precision import resolve_precision, state_device
from .products import to_device

__all__ = ["RecordingSettings", "LayerRecorder", "LayerRecorders"]


@dataclass(frozen=True)
class RecordingSettings:
    """What every layer of one tracker records, and how."""

    observation: ObservationConfig
    states: StateSpec = field(default_factory=StateSpec)
    log_interval: int = 1
    max_samples: int | None = None
    # Shared by the tracker's layers: their costs, and with a budget the draw of the rows kept.
    costs: CostModel = field(default_factory=CostModel)
    sampler: RowSampler | None = None


class LayerRecorder:
    """Feed one layer's outputs into its per-mode states.

    Parameters
    ----------
    name : str
        The layer's name in every output.
    settings : RecordingSettings
        Shared by all layers of a tracker.
    observer : ObserverEntry, optional
        The layer's observer, looked up once; ``None`` looks it up per call.
    """

    def __init__(self, name: str, settings: RecordingSettings, observer: ObserverEntry | None = None) -> None:
        self.name = name
        self.settings = settings
        self.observer = observer
        self.modes: dict[str, LayerState] = {}
        # Hooks may run concurrently (DataParallel replicas, user threads).
        self.lock = threading.Lock()

    def state(self, mode: str) -> LayerState:
        """The mode's state, created on first use."""
        state = self.modes.get(mode)
        if state is None:
            state = self.modes[mode] = self.settings.states.new(self.name, mode)
        return state

    @torch.no_grad()
    def record(self, module: nn.Module, output: object, mode: str) -> bool:
        """Merge one forward pass; returns whether it was recorded."""
        settings = self.settings
        with self.lock:
            state = self.state(mode)
            call = state.forward_calls
            state.forward_calls = call + 1
            if call % settings.log_interval:
                return False
            left = None
            if settings.max_samples is not None:
                left = settings.max_samples - state.rows_offered
                if left <= 0:
                    return False
            rows = observe(module, output, settings.observation, self.name, self.observer).detach()
            # Every accumulator of the layer lives on the configured device (MPS: the CPU).
            home = settings.states.device or state_device(rows.device)
            if rows.device != home:
                rows = to_device(rows, home)
            d = rows.shape[-1]
            n = rows.numel() // d if d else 0
            if left is not None and n > left:
                rows = rows.reshape(-1, d)[:left]
                n = left
            state.rows_offered += n
            rows = self._within_budget(module, output, rows, n, d, first=call == 0)
            if rows is None:
                return True  # a batch the budget skips for this layer
            batch = Batch(rows)
            if autocast_enabled(rows.device.type):
                # Autocast would run the Gram product in half precision.
                with torch.autocast(rows.device.type, enabled=False):
                    state.accumulate(batch)
            else:
                state.accumulate(batch)
            return True

    def _within_budget(
        self, module: nn.Module, output: object, rows: torch.Tensor, n: int, d: int, first: bool
    ) -> torch.Tensor | None:
        """The rows the budget lets this layer keep: all without one, ``None`` for a batch it skips.

        A layer drawing from one batch in ``m`` (:meth:`~delve.budget.cost_model.CostModel.period`)
        keeps its share from the epoch's ``first`` batch, so no epoch is left
        empty, and ``m`` times its share from each other batch it draws from:
        either way a row is kept with probability ``share / n``.
        """
        settings = self.settings
        costs = settings.costs
        if self.name not in costs:
            exact = resolve_precision(settings.states.precision, rows.device) == "float64"
            product = torch.float64 if exact else torch.float32
            weights = relative_cost(rows.device.type, product, rows.dtype)
            rate = training_rate(rows.device.type, rows.dtype)
            costs.note(layer_cost(self.name, module, output, n, d, weights, not rows.is_contiguous(), rate))
        sampler = settings.sampler
        if sampler is None:
            return rows
        keep = costs.rows_to_keep(self.name, n)
        if keep >= n:
            return rows
        period = costs.period(self.name)
        if period > 1 and not first:
            if not sampler.chance(1.0 / period):
                return None
            keep = min(n, keep * period)
        return sampler.select(rows, keep)

    def reset(self) -> None:
        """Forget everything recorded since the last reset, in every mode."""
        with self.lock:
            for state in self.modes.values():
                state.reset()

    def take(self, reset: bool) -> dict[str, LayerState]:
        """Every mode's state as one consistent snapshot, taken under the lock.

        With ``reset`` the state is moved out and empty states take its place
        in the same step, so a batch recorded by another thread meanwhile lands
        in exactly one epoch; without it the state is copied and keeps
        accumulating. Either way nothing read later can change under the
        reader: every accumulator of a state describes the same rows.
        """
        with self.lock:
            taken = self.modes
            if reset:
                self.modes = {mode: state.empty_like() for mode, state in taken.items()}
                return taken
            return {mode: state.copy() for mode, state in taken.items()}

    def give_back(self, taken: dict[str, LayerState]) -> None:
        """Undo :meth:`take` with ``reset`` (the computation failed): merge what came meanwhile."""
        with self.lock:
            for mode, state in taken.items():
                newer = self.modes.get(mode)
                if newer is not None:
                    state.merge(newer)
                self.modes[mode] = state

    def restart_counters(self) -> None:
        """A new epoch for ``log_interval`` and ``max_samples`` while the accumulators keep their rows."""
        with self.lock:
            for state in self.modes.values():
                state.restart_counters()

    def state_dict(self) -> dict:
        """Every mode's state, tensors and plain Python values only."""
        with self.lock:
            return {mode: state.state_dict() for mode, state in self.modes.items()}

    def load_state_dict(self, state_dict: dict, device: torch.device | None = None) -> None:
        """Restore what :meth:`state_dict` produced; the state goes to ``device`` when given."""
        with self.lock:
            self.modes.clear()
            for mode, saved in state_dict.items():
                self.state(mode).load_state_dict(saved, device)


class LayerRecorders(Mapping[str, LayerRecorder]):
    """The recorders of every tracked layer, by name, with the operations a tracker runs on all of them."""

    def __init__(self, observers: Mapping[str, ObserverEntry | None], settings: RecordingSettings) -> None:
        self._recorders = {name: LayerRecorder(name, settings, observer) for name, observer in observers.items()}

    def __getitem__(self, name: str) -> LayerRecorder:
        return self._recorders[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._recorders)

    def __len__(self) -> int:
        return len(self._recorders)

    def take(self, reset: bool) -> dict[str, dict[str, LayerState]]:
        """Every layer's :meth:`LayerRecorder.take`, layer by layer."""
        return {name: recorder.take(reset) for name, recorder in self._recorders.items()}

    def give_back(self, taken: Mapping[str, dict[str, LayerState]]) -> None:
        """Undo :meth:`take` with ``reset`` for every layer."""
        for name, states in taken.items():
            self._recorders[name].give_back(states)

    def reset(self) -> None:
        """Forget everything recorded, in every layer and mode."""
        for recorder in self._recorders.values():
            recorder.reset()

    def restart_counters(self) -> None:
        """A new epoch for ``log_interval`` and ``max_samples`` in every layer."""
        for recorder in self._recorders.values():
            recorder.restart_counters()

    def state_dict(self) -> dict[str, dict]:
        """Every layer's :meth:`LayerRecorder.state_dict`."""
        return {name: recorder.state_dict() for name, recorder in self._recorders.items()}

    def load_state_dict(self, layers: Mapping[str, dict], devices: Mapping[str, torch.device]) -> None:
        """Restore the layers in ``layers``, each onto its device."""
        for name, state in layers.items():
            self._recorders[name].load_state_dict(state, devices[name])
