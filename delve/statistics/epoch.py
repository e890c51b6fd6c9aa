"""From accumulated moments to logged values: a pure function, one eigendecomposition per layer and mode.

:func:`compute_statistics` knows nothing of hooks, ranks or writers: it takes
what every layer and mode accumulated (:class:`LayerMoments`), decomposes all
covariances at once (equal sizes batched) and asks each requested
:class:`~delve.statistics.registry.Statistic` record for its value. Averages over
layers and the counts of rejected batches are derived from the records too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..engine import sync as distributed
from .metrics import spectra
from ..common.naming import MODES, RunRecord, compose_name
from ..engine.recorder import ModeState, RecordingSettings
from .registry import NONFINITE_BATCHES, ROWS, STATISTICS, LayerSummary

__all__ = ["LayerMoments", "LoggedValue", "collect_moments", "compute_statistics", "describe_run"]


@dataclass(frozen=True)
class LayerMoments:
    """What one layer accumulated in one mode since the last reset.

    Attributes
    ----------
    layer, mode : str
        Where it comes from.
    count : int
        Rows merged.
    rejected : int
        Batches left out for NaN or Inf.
    covariance, mean : torch.Tensor or None
        Population covariance ``(d, d)`` and mean ``(d,)``; ``None`` when no
        row was merged.
    sample : torch.Tensor or None
        Reservoir sample of rows, when a statistic reads one.
    extras : mapping
        Extra accumulators, keyed by the statistic that asked for them.
    """

    layer: str
    mode: str
    count: int
    rejected: int = 0
    covariance: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    sample: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


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


def collect_moments(
    taken: Mapping[str, Mapping[str, ModeState]],
    order: Sequence[str],
    settings: RecordingSettings,
    group: Any = None,
    devices: Mapping[str, torch.device] | None = None,
    sync_ranks: bool = True,
) -> list[LayerMoments]:
    """The moments of every layer and mode from states taken off the recorders, merged over ranks.

    Parameters
    ----------
    taken : mapping
        Layer name -> mode -> state, for every tracked layer (the same layers
        on every rank).
    order : sequence of str
        The order of the result (the layers' forward order).
    settings : RecordingSettings
        What was recorded: the extra accumulators and the ``embed`` sample.
    group : ProcessGroup, optional
        The ranks to merge (with ``sync_ranks``); nothing is communicated in
        a single process.
    devices : mapping, optional
        Layer name -> where its merged state lives when this rank saw none.
    sync_ranks : bool
        Merge over the ranks of ``group``; ``False`` keeps this rank's own.
    """
    slots = [(name, mode) for name in taken for mode in MODES]
    states = [taken[name].get(mode) for name, mode in slots]
    if sync_ranks:
        slot_devices = [devices.get(name) for name, _ in slots] if devices else None
        merged = distributed.merge_slots(
            states, settings.extra_accumulators, group, slot_devices, settings.sample_size
        )
    else:
        merged = [
            distributed.MergedSlot(s.covariance, s.extras, s.sample) if s else distributed.MergedSlot(None, {})
            for s in states
        ]
    by_slot = dict(zip(slots, merged))
    moments = []
    for name in order:
        for mode in MODES:
            slot = by_slot[(name, mode)]
            accumulator = slot.covariance
            if accumulator is None:
                continue
            count = accumulator.count
            moments.append(
                LayerMoments(
                    layer=name,
                    mode=mode,
                    count=count,
                    rejected=accumulator.rejected_batches,
                    covariance=accumulator.fix() if count else None,
                    mean=accumulator.mean if count else None,
                    sample=slot.sample.rows if slot.sample is not None else None,
                    extras=slot.extras,
                )
            )
    return moments


def compute_statistics(
    moments: Sequence[LayerMoments],
    keys: Sequence[str],
    threshold: float,
    layerwise: bool = True,
    average: bool = False,
    rows: bool = False,
) -> list[LoggedValue]:
    """Every requested statistic of every layer and mode.

    Parameters
    ----------
    moments : sequence of LayerMoments
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
        Also give the rows each layer and mode merged (``<mode>-rows_<layer>``).

    Returns
    -------
    list of LoggedValue
        Per layer and mode, the statistics in ``keys`` order (and the rows);
        then the averages per mode; then the rejected-batch counts (only
        where batches were rejected).

    Examples
    --------
    >>> moments = LayerMoments("fc", "train", 10, covariance=torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)),
    ...                        mean=torch.zeros(2, dtype=torch.float64))
    >>> [(v.name, v.value) for v in compute_statistics([moments], ["lsat", "idim"], threshold=0.7)]
    [('train-saturation_fc', 0.5), ('train-intrinsic-dimensionality_fc', 1)]
    """
    statistics = [STATISTICS[key] for key in keys]
    filled = [m for m in moments if m.count > 0 and m.covariance is not None]
    needs_vectors = any(statistic.needs_vectors for statistic in statistics)
    decompositions = spectra([m.covariance for m in filled], vectors=needs_vectors)  # type: ignore[misc]

    values: list[LoggedValue] = []
    averaged: dict[tuple[str, str], list[float]] = {}
    for layer, spectrum in zip(filled, decompositions):
        summary = LayerSummary(
            covariance=layer.covariance,  # type: ignore[arg-type]
            spectrum=spectrum,
            mean=layer.mean,  # type: ignore[arg-type]
            threshold=threshold,
            count=layer.count,
            sample=layer.sample,
            extras=dict(layer.extras),
        )
        for statistic in statistics:
            value = statistic.compute(summary)
            if statistic.averaged:
                averaged.setdefault((layer.mode, statistic.average_name), []).append(value)
                if not layerwise:
                    continue
            values.append(LoggedValue(layer.mode, layer.layer, statistic.name, value))
        if rows:
            values.append(LoggedValue(layer.mode, layer.layer, ROWS, layer.count))
    if average:
        for mode in MODES:
            for statistic in statistics:
                per_layer = averaged.get((mode, statistic.average_name))
                if per_layer:
                    values.append(LoggedValue(mode, None, statistic.average_name, float(np.mean(per_layer))))
    for layer in moments:
        if layer.rejected:
            values.append(LoggedValue(layer.mode, layer.layer, NONFINITE_BATCHES, layer.rejected))
    return values


def describe_run(layers: Sequence[str], keys: Sequence[str], average: bool = False, rows: bool = False) -> RunRecord:
    """The names :func:`compute_statistics` can log for these layers and keys.

    Examples
    --------
    >>> record = describe_run(["fc"], ["lsat"], average=True)
    >>> record.statistics, record.mode_statistics
    (('saturation', 'nonfinite-batches'), ('average-saturation',))
    """
    statistics = [STATISTICS[key] for key in keys]
    return RunRecord(
        layers=tuple(layers),
        statistics=(*(s.name for s in statistics), NONFINITE_BATCHES, *((ROWS,) if rows else ())),
        mode_statistics=tuple(s.average_name for s in statistics if s.averaged) if average else (),
    )
