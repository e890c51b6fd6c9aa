"""Merge running covariances across ``torch.distributed`` ranks.

Every rank of a data-parallel job sees a different shard of the data, so each
rank's accumulator holds the count ``n_r``, mean ``m_r`` and centred co-moment
``M_r`` of its own rows only. The moments of all rows together follow exactly
from three reductions, none of which gathers a ``d x d`` matrix per rank::

    N = sum_r n_r                               (all_reduce of the counts)
    m = sum_r n_r m_r / N                       (all_reduce of the sums)
    M = sum_r [M_r + n_r (m_r - m)(m_r - m)^T]  (all_reduce of d x d, once)

Each rank shifts its own co-moment to the global mean before the sum, so the
communication is one ``d x d`` all-reduce per layer and mode, whatever the
number of ranks (its upper triangle only, the matrix being symmetric).

Every rank must call :func:`merge_across_ranks` with the same list of slots in
the same order (the tracker uses its layer list and the fixed modes, never
what a rank happened to see), because every slot takes part in the same
collectives on every rank; a rank that saw no data for a slot contributes
zeros. Outside a process group, or with one process, nothing is communicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .covariance import STATE_VERSION, TorchCovarianceMatrix
from ..common.ranks import communication_device, get_rank, get_world_size, is_distributed
from .recorder import ModeState
from .sample import ReservoirSample

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "communication_device",
    "merge_across_ranks",
    "merge_extras_across_ranks",
    "merge_slots",
    "MergedSlot",
]

# Larger than any feature size; marks "this rank saw no data" in the MAX reduction.
_NO_FEATURES = 2**62


def merge_across_ranks(
    accumulators: Sequence[TorchCovarianceMatrix | None],
    group: Any = None,
    devices: Sequence[torch.device | None] | None = None,
) -> list[TorchCovarianceMatrix | None]:
    """The accumulators of all ranks, merged slot by slot.

    Parameters
    ----------
    accumulators : list of TorchCovarianceMatrix or None
        One entry per slot (layer and mode), in the same order on every rank;
        ``None`` where this rank holds no state for the slot.
    group : ProcessGroup, optional
        The process group; the default group when ``None``.
    devices : list of torch.device or None, optional
        Where a merged accumulator lives when this rank had none for the slot
        (the layer's device); the communication device otherwise.

    Returns
    -------
    list of TorchCovarianceMatrix or None
        New accumulators holding every rank's rows; the inputs are left
        untouched, so a run that never resets its covariance is not counted
        twice at the next merge. ``None`` where no rank saw data and none
        rejected a batch. Without a process group of several ranks the input
        list is returned as it is.

    Raises
    ------
    ValueError
        If the ranks disagree on a slot's feature size (raised on every rank).

    Examples
    --------
    >>> import torch
    >>> acc = TorchCovarianceMatrix()
    >>> acc.update(torch.randn(8, 3))
    >>> merge_across_ranks([acc, None])[0] is acc  # a single process
    True
    """
    if not is_distributed(group):
        return list(accumulators)
    device = communication_device(group)
    slots = len(accumulators)
    if devices is None:
        devices = [None] * slots
    if len(devices) != slots:
        raise ValueError(f"devices has {len(devices)} entries for {slots} accumulators")

    # 1. counts, rejected batches and feature sizes of every slot: two small collectives.
    totals = torch.zeros(slots, 2, dtype=torch.int64)
    sizes = torch.zeros(slots, 2, dtype=torch.int64)
    sizes[:, 1] = -_NO_FEATURES
    for slot, accumulator in enumerate(accumulators):
        if accumulator is None:
            continue
        count = accumulator.count
        totals[slot, 0] = count
        totals[slot, 1] = accumulator.rejected_batches
        if count > 0:
            d = accumulator.num_features
            sizes[slot, 0] = d
            sizes[slot, 1] = -d
    totals = totals.to(device)
    sizes = sizes.to(device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    totals = totals.cpu()
    sizes = sizes.cpu()

    active = []
    for slot in range(slots):
        if int(totals[slot, 0]) == 0:
            continue
        largest, smallest = int(sizes[slot, 0]), -int(sizes[slot, 1])
        if largest != smallest:
            raise ValueError(
                f"slot {slot}: the ranks recorded different feature sizes ({smallest} and {largest}); "
                "every rank must run the same model"
            )
        active.append((slot, largest))

    # 2. the global mean of every active slot, from one all_reduce of n_r * m_r.
    offsets = [0]
    for _, d in active:
        offsets.append(offsets[-1] + d)
    sums = torch.zeros(offsets[-1], dtype=torch.float64, device=device)
    for (slot, _), start, stop in zip(active, offsets, offsets[1:]):
        accumulator = accumulators[slot]
        if accumulator is not None and accumulator.count > 0:
            sums[start:stop] = accumulator.mean.to(device, torch.float64) * accumulator.count
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)

    # 3. each rank shifts its co-moment to the global mean; one all_reduce of its upper
    #    triangle (half the d x d matrix) per slot.
    merged: list[TorchCovarianceMatrix | None] = [None] * slots
    for (slot, d), start, stop in zip(active, offsets, offsets[1:]):
        total = int(totals[slot, 0])
        mean = sums[start:stop] / total
        rows, columns = torch.triu_indices(d, d, device=device)
        accumulator = accumulators[slot]
        if accumulator is not None and accumulator.count > 0:
            n_r = accumulator.count
            state = accumulator.state_dict()
            comoment = state["comoment_upper"].to(device, torch.float64)
            shift = state["mean"].to(device, torch.float64) - mean
            comoment.add_(shift[rows] * shift[columns], alpha=float(n_r))
        else:
            comoment = torch.zeros(rows.shape[0], dtype=torch.float64, device=device)
        dist.all_reduce(comoment, op=dist.ReduceOp.SUM, group=group)
        merged[slot] = _accumulator_from(
            accumulators[slot], devices[slot], device, total, int(totals[slot, 1]), mean, comoment
        )

    # Slots where every rank rejected everything still report their rejected batches.
    for slot in range(slots):
        if merged[slot] is None and int(totals[slot, 1]) > 0:
            merged[slot] = _accumulator_from(
                accumulators[slot], devices[slot], device, 0, int(totals[slot, 1]), None, None
            )
    return merged


def _accumulator_from(
    local: TorchCovarianceMatrix | None,
    fallback_device: torch.device | None,
    communication_device: torch.device,
    count: int,
    rejected: int,
    mean: torch.Tensor | None,
    comoment: torch.Tensor | None,
) -> TorchCovarianceMatrix:
    local_device = local.device if local is not None else None
    target = local_device or fallback_device or communication_device
    merged = TorchCovarianceMatrix(
        device=target,
        dtype=local.dtype if local is not None else torch.float64,
        precision=local.precision if local is not None else "float64",
    )
    state: dict[str, torch.Tensor] = {
        "version": torch.tensor(STATE_VERSION, dtype=torch.int64),
        "count": torch.tensor(count, dtype=torch.int64),
        "rejected_batches": torch.tensor(rejected, dtype=torch.int64),
    }
    if mean is not None and comoment is not None:
        state["mean"] = mean.to(target)
        state["comoment_upper"] = comoment.to(target)  # the upper triangle, row by row
    merged.load_state_dict(state)
    return merged


def merge_extras_across_ranks(extras: Sequence[Any], num_features: int, group: Any = None) -> list[Any]:
    """Merge a slot's extra accumulators (see :class:`delve.statistics.registry.FeatureAccumulator`).

    Every rank calls this with the same keys in the same order for a slot
    that saw data on some rank (a rank without data passes fresh
    accumulators); each accumulator's ``merged_across_ranks`` returns a new,
    merged one.

    Examples
    --------
    >>> merge_extras_across_ranks([], num_features=3)  # nothing to merge
    []
    """
    if not is_distributed(group):
        return list(extras)
    return [extra.merged_across_ranks(num_features, group) for extra in extras]


@dataclass(frozen=True)
class MergedSlot:
    """One layer and mode's accumulators over every rank."""

    covariance: TorchCovarianceMatrix | None
    extras: dict[str, Any]
    sample: ReservoirSample | None = None


def merge_slots(
    states: Sequence[ModeState | None],
    extra_factories: Sequence[tuple[str, Callable[[], Any]]],
    group: Any = None,
    devices: Sequence[torch.device | None] | None = None,
    sample_size: int | None = None,
) -> list[MergedSlot]:
    """Covariance, extra accumulators and ``embed`` sample of every slot (layer and mode), over all ranks.

    ``states`` lists the same slots in the same order on every rank (the
    tracker's layers times the modes, whatever each rank saw), with ``None``
    where this rank recorded nothing, so every rank joins the same
    collectives. Outside a process group of several ranks each state is
    returned as it is.
    """
    if not is_distributed(group):
        return [
            MergedSlot(s.covariance, s.extras, s.sample) if s is not None else MergedSlot(None, {}) for s in states
        ]
    merged = merge_across_ranks([s.covariance if s is not None else None for s in states], group, devices)
    slots = []
    for accumulator, state in zip(merged, states):
        extras: dict[str, Any] = {}
        sample = None
        # Decided from the merged (global) count, so every rank takes part.
        if accumulator is not None and accumulator.count > 0:
            d = accumulator.num_features
            local = [state.extras[key] if state is not None else factory() for key, factory in extra_factories]
            extras = dict(zip((key for key, _ in extra_factories), merge_extras_across_ranks(local, d, group)))  # type: ignore[arg-type]
            if sample_size:
                own = state.sample if state is not None and state.sample is not None else ReservoirSample(sample_size)
                sample = own.merged_across_ranks(d, group)  # type: ignore[arg-type]
        slots.append(MergedSlot(accumulator, extras, sample))
    return slots
