"""An epoch's values: the layers' states merged over ranks, one eigendecomposition each, every statistic.

:func:`merge_over_ranks` brings every layer and mode's
:class:`~delve.engine.layer_state.LayerState` together across
``torch.distributed`` ranks (collectives; nothing in one process).
:func:`compute_statistics` is then a pure function of those states: it
decomposes all covariances at once (equal sizes batched) and asks each
requested :class:`~delve.statistics.registry.Statistic` record for its value.
Averages over layers and the counts of rejected batches are derived from the
records too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.naming import MODES, RunRecord, compose_name
from ..engine.layer_state import LayerState
from ..engine.sync import merge_layer_states
from .registry import NONFINITE_BATCHES, ROWS, STATISTICS, LayerSummary
from .spectra import spectra

__all__ = ["LoggedValue", "merge_over_ranks", "compute_statistics", "describe_run"]


@dataclass(frozen=True)
class LoggedValue:
    """One value to log: per layer (``layer`` set) or over all layers of a mode.

    Examples
    --------
    >>> LoggedValue("train", "fc", "saturation", 0.5).name
    'train-saturation_fc'
    """

    mode: str
    layer: str | None
    statistic: str
    value: Any

    @property
    def name(self) -> str:
        """The logged name (see :mod:`delve.common.naming`)."""
        return compose_name(self.mode, self.layer, self.statistic)


def merge_over_ranks(
    taken: Mapping[str, Mapping[str, LayerState]],
    order: Sequence[str],
    empty: Callable[[str, str], LayerState],
    group: Any = None,
    devices: Mapping[str, torch.device] | None = None,
    sync: bool = True,
) -> list[LayerState]:
    """Every layer and mode's state over all ranks, in ``order``; the states nobody recorded left out.

    Parameters
    ----------
    taken : mapping
        Layer name -> mode -> state, for every tracked layer (the same layers
        on every rank).
    order : sequence of str
        The order of the result (the layers' forward order).
    empty : callable
        ``empty(layer, mode)`` makes the fresh state of a slot this rank
        never recorded, so every rank joins the same collectives.
    group : ProcessGroup, optional
        The ranks to merge; outside a process group nothing is communicated.
    devices : mapping, optional
        Layer name -> where its merged state lives when this rank saw none.
    sync : bool
        ``False`` keeps this rank's own states (ranks that train different models).
    """
    slots = [(name, mode) for name in taken for mode in MODES]
    merged = [taken[name].get(mode) for name, mode in slots]
    if sync:
        merged = merge_layer_states(
            merged,
            [lambda name=name, mode=mode: empty(name, mode) for name, mode in slots],
            group,
            [devices.get(name) for name, _ in slots] if devices else None,
        )
    by_slot = dict(zip(slots, merged))
    return [by_slot[(name, mode)] for name in order for mode in MODES if by_slot.get((name, mode)) is not None]


def compute_statistics(
    states: Sequence[LayerState],
    keys: Sequence[str],
    threshold: float,
    layerwise: bool = True,
    average: bool = False,
    rows: bool = False,
    options: Mapping[str, Any] | None = None,
) -> list[LoggedValue]:
    """Every requested statistic of every layer and mode.

    Parameters
    ----------
    states : sequence of LayerState
        In the order values are to be logged (the layers' forward order).
    keys : sequence of str
        Statistic keys of :data:`~delve.statistics.registry.STATISTICS`.
    threshold : float
        The saturation threshold.
    layerwise : bool
        ``False`` leaves out the per-layer values of averaged statistics.
    average : bool
        Also give the mean over layers of every averaged statistic.
    rows : bool
        Give the rows each layer and mode merged (``<mode>-rows_<layer>``)
        everywhere (under a budget); without it, only beside the values of
        layers with fewer rows than features, which are missing.
    options : mapping, optional
        Settings statistics read (``probe_ridge``), as
        :attr:`~delve.statistics.registry.LayerSummary.options`.

    Returns
    -------
    list of LoggedValue
        Per layer and mode, the statistics in ``keys`` order (and the rows);
        then the averages per mode; then the rejected-batch counts (only
        where batches were rejected).

    Examples
    --------
    >>> from delve.engine.layer_state import StateSpec
    >>> state = StateSpec().new("fc", "train")
    >>> state.covariance.update(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]]))
    >>> [(v.name, v.value) for v in compute_statistics([state], ["lsat", "idim"], threshold=0.7)]
    [('train-saturation_fc', 0.5), ('train-intrinsic-dimensionality_fc', 1)]
    """
    statistics = [STATISTICS[key] for key in keys]
    filled = [state for state in states if state.covariance.count > 0]
    covariances = [state.covariance.fix() for state in filled]
    needs_vectors = any(statistic.needs_vectors for statistic in statistics)
    decompositions = spectra(covariances, vectors=needs_vectors)

    values: list[LoggedValue] = []
    averaged: dict[tuple[str, str], list[float]] = {}
    trained = {state.layer: state.accumulators for state in states if state.mode == "train"}
    for state, covariance, spectrum in zip(filled, covariances, decompositions):
        summary = LayerSummary(
            covariance=covariance,
            spectrum=spectrum,
            mean=state.covariance.mean,
            threshold=threshold,
            count=state.covariance.count,
            accumulators=state.accumulators,
            mode=state.mode,
            fitted_on=trained.get(state.layer),
            options=dict(options or {}),
        )
        # Fewer rows than features span fewer directions than the layer has: not a finding.
        too_few = summary.count < summary.num_features
        for statistic in statistics:
            value = math.nan if statistic.needs_rows and too_few else statistic.compute(summary)
            if statistic.parts:
                values.extend(
                    LoggedValue(state.mode, state.layer, name, value[part.name])
                    for part, name in zip(statistic.parts, statistic.logged_names)
                    if part.name in value
                )
                continue
            if statistic.averaged:
                averaged.setdefault((state.mode, statistic.average_name), []).append(value)
                if not layerwise:
                    continue
            values.append(LoggedValue(state.mode, state.layer, statistic.name, value))
        if rows or too_few:
            values.append(LoggedValue(state.mode, state.layer, ROWS, summary.count))
    if average:
        for mode in MODES:
            for statistic in statistics:
                per_layer = [value for value in averaged.get((mode, statistic.average_name), []) if value == value]
                if per_layer:
                    values.append(LoggedValue(mode, None, statistic.average_name, float(np.mean(per_layer))))
    for state in states:
        rejected = state.covariance.rejected_batches
        if rejected:
            values.append(LoggedValue(state.mode, state.layer, NONFINITE_BATCHES, rejected))
    return values


def describe_run(layers: Sequence[str], keys: Sequence[str], average: bool = False) -> RunRecord:
    """The names :func:`compute_statistics` can log for these layers and keys.

    Examples
    --------
    >>> record = describe_run(["fc"], ["lsat"], average=True)
    >>> record.statistics, record.mode_statistics
    (('saturation', 'nonfinite-batches', 'rows'), ('average-saturation',))
    """
    statistics = [STATISTICS[key] for key in keys]
    logged = tuple(name for statistic in statistics for name in statistic.logged_names)
    return RunRecord(
        layers=tuple(layers),
        statistics=(*logged, NONFINITE_BATCHES, ROWS),
        mode_statistics=tuple(s.average_name for s in statistics if s.averaged) if average else (),
    )
