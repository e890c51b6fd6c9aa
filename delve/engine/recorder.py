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
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..budget.cost_model import ROWS_PER_FEATURE, CostModel
from ..budget.row_sampler import RowSampler
from ..capture.affine import AffineView
from ..capture.observation import ObservationConfig, ObserverEntry, find_observer, observe
from ..capture.rows import gather_rows
from ..common.torch_features import autocast_enabled
from .accumulator import Batch
from .input_route import MappedInput, ScatterCache
from .layer_route import LayerRoute, input_source
from .layer_state import LayerState, StateSpec
from .precision import state_device
from .products import to_device
from .targets import Targets, TargetSlot

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
    # With a probe statistic: where set_targets() puts the targets of the forward passes that follow.
    targets: TargetSlot | None = None
    # Input scatters of the forward pass under way, shared by the layers that read the same input.
    scatters: ScatterCache | None = field(default_factory=ScatterCache)


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
        self.route = LayerRoute(
            name, settings.costs, settings.observation, settings.states.precision, settings.scatters, settings.targets
        )
        self._warned_unpooled = False
        # Hooks may run concurrently (DataParallel replicas, user threads).
        self.lock = threading.Lock()

    def state(self, mode: str) -> LayerState:
        """The mode's state, created on first use."""
        state = self.modes.get(mode)
        if state is None:
            state = self.modes[mode] = self.settings.states.new(self.name, mode)
        return state

    @torch.no_grad()
    def record(self, module: nn.Module, inputs: tuple, output: object, mode: str) -> bool:
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
            view = self.route.view(module, inputs, output, rows, home)
            d = rows.shape[-1]
            n = rows.numel() // d if d else 0
            if left is not None and n > left:
                rows = rows.reshape(-1, d)[:left]
                if view is not None:
                    view = AffineView(view.rows.reshape(-1, view.features_in)[:left], view.weight, view.bias)
                n = left
            state.rows_offered += n
            batch = self._kept(state, rows, n, view, first=call == 0)
            targets = settings.targets.current if settings.targets is not None else None
            if batch is None:
                if targets is None:
                    return True  # a batch the budget skips for this layer
                # A batch the budget skips still feeds the probes: they rest on every sample.
                batch = Batch(rows.reshape(-1, d)[:0])
            if targets is not None:
                self._attach_targets(batch, module, output, targets, home)
            state.rows_kept += batch.n
            if autocast_enabled(rows.device.type):
                # Autocast would run the Gram product in half precision.
                with torch.autocast(rows.device.type, enabled=False):
                    state.accumulate(batch)
            else:
                state.accumulate(batch)
            return True

    def _kept(
        self, state: LayerState, rows: torch.Tensor, n: int, view: AffineView | None, first: bool
    ) -> Batch | None:
        """The batch of the rows the budget lets this layer keep: all without one, ``None`` for a batch it skips.

        A layer drawing from one batch in ``m`` (:meth:`~delve.budget.cost_model.CostModel.period`)
        keeps its share from the epoch's ``first`` batch, so no epoch is left
        empty, and ``m`` times its share from each other batch it draws from:
        either way a row is kept with probability ``share / n``. An
        evaluation pass keeps every row until the layer holds
        :data:`~delve.budget.cost_model.ROWS_PER_FEATURE` rows per feature in
        the epoch: it has no backward to hide behind, and is usually short.
        On the input route the same rows of the input are kept.
        """
        settings = self.settings
        d = rows.shape[-1]
        keep = n
        if settings.sampler is not None and not (state.mode == "eval" and state.rows_kept < ROWS_PER_FEATURE * d):
            keep = settings.costs.rows_to_keep(self.name, n)
        if keep >= n:
            return self._batch(state, rows, n, view, None, None)
        sampler = settings.sampler
        assert sampler is not None
        period = settings.costs.period(self.name)
        if period > 1 and not first:
            if not sampler.chance(1.0 / period):
                return None
            # On the input route a drawn batch is kept whole: its map costs the same whatever it holds.
            keep = n if view is not None else min(n, keep * period)
            if keep >= n:
                return self._batch(state, rows, n, view, None, None)
        if view is None:
            return self._batch(state, gather_rows(rows, sampler.indices(n, keep, rows.device)), keep, None, None, None)
        source = input_source(view)
        if settings.scatters is not None:
            indices = settings.scatters.shared_draw(source, n, keep, lambda: sampler.indices(n, keep, rows.device))
        else:
            indices = sampler.indices(n, keep, rows.device)
        kept_view = AffineView(gather_rows(view.rows, indices), view.weight, view.bias)
        # The output rows are gathered only for the accumulators that read them.
        kept_rows = gather_rows(rows, indices) if len(state.accumulators) > 1 else rows.reshape(-1, d)[:0]
        return self._batch(state, kept_rows, keep, kept_view, source, id(indices))

    def _batch(
        self,
        state: LayerState,
        rows: torch.Tensor,
        n: int,
        view: AffineView | None,
        source: torch.Tensor | None,
        kept: object,
    ) -> Batch:
        if view is None:
            return Batch(rows, n=n)
        source = source if source is not None else input_source(view)
        return Batch(rows, n=n, mapped=MappedInput(view, source, kept, self.settings.scatters))

    def _attach_targets(
        self, batch: Batch, module: nn.Module, output: object, targets: Targets, home: torch.device
    ) -> None:
        """The batch's per-sample features and targets, for the layer's probe."""
        entry = self.observer or find_observer(module)
        if entry is None or entry.pool is None:
            if not self._warned_unpooled:
                self._warned_unpooled = True
                warnings.warn(
                    f"delve: layer {self.name!r} ({type(module).__name__}) has no pooling per sample, so probes "
                    "skip it; pass pool= to delve.register_observer for its class",
                    UserWarning,
                    stacklevel=4,
                )
            return
        samples = entry.pool(module, output).detach()
        if samples.shape[0] != targets.samples:
            raise ValueError(
                f"delve: layer {self.name!r} saw {samples.shape[0]} samples in this forward pass but "
                f"set_targets() gave {targets.samples} targets; call set_targets() with this batch's targets "
                "(or set_targets(None) to stop probing)"
            )
        if samples.device != home:
            samples = to_device(samples, home)
        batch.samples = samples
        batch.targets, batch.labels = targets.for_samples(home)

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
