"""Per-layer recording state: one accumulator per mode, counters and a lock.

This is the forward hook's hot path. Per call it does a few dictionary look-ups
and integer comparisons in Python, builds the observation view and hands it to
the covariance update; nothing here reads a value back from the device.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .accumulator import FeatureAccumulator
from ..budget.allocation import CostModel
from ..budget.cost import layer_cost, relative_cost
from .covariance import TorchCovarianceMatrix
from .products import to_device
from ..capture.observation import ObservationConfig, ObserverEntry, observe
from .precision import resolve_precision, state_device
from .sample import ReservoirSample, RowSampler
from ..common.torch_features import autocast_enabled

__all__ = ["RecordingSettings", "ModeState", "LayerRecorder", "LayerRecorders"]


@dataclass(frozen=True)
class RecordingSettings:
    """What every layer of one tracker records, and how."""

    observation: ObservationConfig
    log_interval: int = 1
    max_samples: int | None = None
    device: torch.device | None = None
    precision: str = "auto"
    sample_size: int | None = None  # reservoir rows per layer and mode, None: no sample
    seed: int = 0  # of the tracker's random streams (differs between ranks)
    # (statistic key, factory) for statistics that accumulate more than the covariance
    extra_accumulators: tuple[tuple[str, Callable[[], FeatureAccumulator]], ...] = ()
    # Shared by the tracker's layers: their costs, and with a budget the draw of the rows kept.
    costs: CostModel | None = None
    sampler: RowSampler | None = None


@dataclass
class ModeState:
    """What one layer accumulated in one mode (``train`` or ``eval``)."""

    covariance: TorchCovarianceMatrix
    sample: ReservoirSample | None = None
    forward_calls: int = 0
    rows_offered: int = 0
    extras: dict[str, FeatureAccumulator] = field(default_factory=dict)

    def reset(self) -> None:
        self.covariance.reset()
        if self.sample is not None:
            self.sample.reset()
        for accumulator in self.extras.values():
            accumulator.reset()
        self.forward_calls = 0
        self.rows_offered = 0


class LayerRecorder:
    """Feed one layer's outputs into its per-mode accumulators.

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
        self.modes: dict[str, ModeState] = {}
        # Hooks may run concurrently (DataParallel replicas, user threads).
        self.lock = threading.Lock()

    def state(self, mode: str) -> ModeState:
        """The mode's state, created on first use."""
        state = self.modes.get(mode)
        if state is None:
            state = self.modes[mode] = self._fresh_state(mode)
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
            home = settings.device or state_device(rows.device)
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
            if autocast_enabled(rows.device.type):
                # Autocast would run the Gram product in half precision.
                with torch.autocast(rows.device.type, enabled=False):
                    self._accumulate(state, rows)
            else:
                self._accumulate(state, rows)
            return True

    def _within_budget(
        self, module: nn.Module, output: object, rows: torch.Tensor, n: int, d: int, first: bool
    ) -> torch.Tensor | None:
        """The rows the budget lets this layer keep: all without one, ``None`` for a batch it skips.

        A layer drawing from one batch in ``m`` (:meth:`~delve.budget.allocation.CostModel.period`)
        keeps its share from the epoch's ``first`` batch, so no epoch is left
        empty, and ``m`` times its share from each other batch it draws from:
        either way a row is kept with probability ``share / n``.
        """
        settings = self.settings
        costs = settings.costs
        if costs is None:
            return rows
        if self.name not in costs:
            exact = resolve_precision(settings.precision, rows.device) == "float64"
            product = torch.float64 if exact else torch.float32
            weights = relative_cost(rows.device.type, product, rows.dtype)
            costs.note(layer_cost(self.name, module, output, n, d, weights, strided=not rows.is_contiguous()))
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

    def _accumulate(self, state: ModeState, rows: torch.Tensor) -> None:
        # The covariance judges the batch (NaN or Inf anywhere: left out
        # whole); every other accumulator follows its verdict, so all the
        # statistics of a layer rest on the same rows.
        accepted = state.covariance.update_rows(rows)
        if state.sample is not None:
            state.sample.add(rows, accepted)
        for accumulator in state.extras.values():
            accumulator.update(rows, accepted)

    def reset(self) -> None:
        """Forget everything recorded since the last reset, in every mode."""
        with self.lock:
            for state in self.modes.values():
                state.reset()

    def take(self, reset: bool) -> dict[str, ModeState]:
        """Every mode's state as one consistent snapshot, taken under the lock.

        With ``reset`` the state is moved out and empty accumulators take its
        place in the same step, so a batch recorded by another thread meanwhile
        lands in exactly one epoch; without it the state is copied and keeps
        accumulating. Either way nothing read later can change under the
        reader: the covariance, the sample and the extras describe the same
        rows.
        """
        with self.lock:
            taken = self.modes
            if reset:
                self.modes = {mode: self._fresh_state(mode, previous=state) for mode, state in taken.items()}
                return taken
            return {mode: self._copy_state(mode, state) for mode, state in taken.items()}

    def give_back(self, taken: dict[str, ModeState]) -> None:
        """Undo :meth:`take` with ``reset`` (the computation failed): merge what came meanwhile."""
        with self.lock:
            for mode, state in taken.items():
                newer = self.modes.get(mode)
                if newer is not None:
                    state.covariance.merge(newer.covariance)
                    if state.sample is not None and newer.sample is not None:
                        state.sample.merge(newer.sample)
                    for key, accumulator in state.extras.items():
                        accumulator.merge(newer.extras[key])
                    state.forward_calls += newer.forward_calls
                    state.rows_offered += newer.rows_offered
                self.modes[mode] = state

    def _fresh_state(self, mode: str, previous: ModeState | None = None) -> ModeState:
        settings = self.settings
        sample = None
        if settings.sample_size:
            # Independent keys per layer, mode and rank: ranks' samples then merge into a uniform one.
            seed = zlib.crc32(f"{settings.seed}/{self.name}/{mode}".encode())
            sample = ReservoirSample(settings.sample_size, seed=seed)
            if previous is not None and previous.sample is not None:
                # The key stream continues across epochs instead of restarting.
                sample.share_generators(previous.sample)
        return ModeState(
            TorchCovarianceMatrix(device=settings.device, precision=settings.precision),
            sample,
            extras={key: factory() for key, factory in settings.extra_accumulators},
        )

    def _copy_state(self, mode: str, state: ModeState) -> ModeState:
        copy = self._fresh_state(mode)
        copy.covariance.load_state_dict(state.covariance.state_dict())
        if state.sample is not None and copy.sample is not None:
            copy.sample.load_state_dict(state.sample.state_dict())
        for key, accumulator in state.extras.items():
            copy.extras[key].load_state_dict(accumulator.state_dict())
        copy.forward_calls, copy.rows_offered = state.forward_calls, state.rows_offered
        return copy

    def state_dict(self) -> dict:
        """Accumulators and counters, tensors and plain Python values only."""
        with self.lock:
            return {
                mode: {
                    "covariance": state.covariance.state_dict(),
                    "forward_calls": state.forward_calls,
                    "rows_offered": state.rows_offered,
                    "extras": {key: acc.state_dict() for key, acc in state.extras.items()},
                    **({"sample": state.sample.state_dict()} if state.sample is not None else {}),
                }
                for mode, state in self.modes.items()
            }

    def restart_counters(self) -> None:
        """A new epoch for ``log_interval`` and ``max_samples`` while the accumulators keep their rows."""
        with self.lock:
            for state in self.modes.values():
                state.forward_calls = 0
                state.rows_offered = 0

    def load_state_dict(self, state_dict: dict, device: torch.device | None = None) -> None:
        """Restore what :meth:`state_dict` produced; the state goes to ``device`` when given."""
        if device is not None:
            state_dict = _to(state_dict, device)
        with self.lock:
            self.modes.clear()
            for mode, saved in state_dict.items():
                state = self.state(mode)
                state.covariance.load_state_dict(saved["covariance"])
                state.forward_calls = int(saved["forward_calls"])
                state.rows_offered = int(saved["rows_offered"])
                if state.sample is not None and "sample" in saved:
                    state.sample.load_state_dict(saved["sample"])
                for key, extra_state in saved.get("extras", {}).items():
                    if key in state.extras:
                        state.extras[key].load_state_dict(extra_state)


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

    def take(self, reset: bool) -> dict[str, dict[str, ModeState]]:
        """Every layer's :meth:`LayerRecorder.take`, layer by layer."""
        return {name: recorder.take(reset) for name, recorder in self._recorders.items()}

    def give_back(self, taken: Mapping[str, dict[str, ModeState]]) -> None:
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


def _to(state: Any, device: torch.device) -> Any:
    """``state`` with its floating tensors on ``device``.

    Counters stay where they are (they are read as Python ints, or placed
    beside their data by the accumulator that loads them), and so do
    generator states, which are CPU byte tensors wherever the generator is.
    """
    if isinstance(state, torch.Tensor):
        return state.to(device) if state.is_floating_point() else state
    if isinstance(state, dict):
        return {key: _to(value, device) for key, value in state.items()}
    return state
