"""Merging accumulators across ``torch.distributed`` ranks, generically over their declared state.

Every rank of a data-parallel job sees a different shard of the data; the
statistics must be those of all the rows. Each piece of an accumulator's
state knows, through its kind (:mod:`delve.engine.states`), what its ranks
must sum and how to rebuild the merged value. This module drives every piece
of every layer and mode in lockstep:

1. one all-reduce (MAX) of every piece's shape, so that a rank that saw no
   rows for a layer contributes zeros of the right size and a mismatch is an
   error on every rank;
2. one all-reduce (SUM) per round of the kinds' exchanges (two rounds for
   co-moments, one for sums and samples), whatever the number of layers, in
   slices of at most :data:`ROUND_BYTES`. Nothing is gathered per rank.

Every rank must call :func:`merge_across_ranks` with the same slots in the
same order (the tracker uses its layer list and the fixed modes, never what a
rank happened to see). Outside a process group of several ranks nothing is
communicated and the inputs come back as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..common.ranks import communication_device, get_rank, get_world_size, is_distributed
from .accumulator import Accumulator
from .layer_state import LayerState
from .states import DESCRIPTION_WIDTH, Ranks, StateKind

__all__ = ["merge_across_ranks", "merge_layer_states", "ROUND_BYTES"]

#: Largest buffer summed across ranks at once; a round with more is sent in slices.
ROUND_BYTES = 64 * 2**20
# Larger than any shape; marks "no value on this rank" in the MAX reduction of negated shapes.
_ABSENT = 2**62

A = TypeVar("A", bound=Accumulator)


def merge_across_ranks(
    accumulators: Sequence[A | None],
    group: Any = None,
    devices: Sequence[torch.device | None] | None = None,
    empty: Sequence[Callable[[], A]] | None = None,
) -> list[A | None]:
    """The accumulators of all ranks, merged slot by slot.

    Parameters
    ----------
    accumulators : list of Accumulator or None
        One entry per slot, in the same order on every rank; ``None`` where
        this rank holds nothing for the slot.
    group : ProcessGroup, optional
        The process group; the default group when ``None``.
    devices : list of torch.device or None, optional
        Where a merged accumulator lives when this rank had none (the layer's
        device); else where this rank's lives.
    empty : list of callables, optional
        Per slot, makes the empty accumulator a rank without one contributes;
        required when some entry is ``None`` on some rank.

    Returns
    -------
    list of Accumulator or None
        New accumulators holding every rank's accumulation; the inputs are
        left untouched (a run that never resets is not counted twice at the
        next merge). ``None`` where no rank holds anything. Without a process
        group of several ranks the input list is returned as it is.

    Raises
    ------
    ValueError
        If the ranks disagree on a slot's shapes (raised on every rank).

    Examples
    --------
    >>> from delve import TorchCovarianceMatrix
    >>> acc = TorchCovarianceMatrix()
    >>> acc.update(torch.randn(8, 3))
    >>> merge_across_ranks([acc, None])[0] is acc  # a single process
    True
    """
    if not is_distributed(group):
        return list(accumulators)
    slots = len(accumulators)
    devices = list(devices) if devices is not None else [None] * slots
    if len(devices) != slots:
        raise ValueError(f"devices has {len(devices)} entries for {slots} accumulators")
    local: list[Accumulator] = []
    for slot, accumulator in enumerate(accumulators):
        if accumulator is None:
            if empty is None:
                raise ValueError(f"slot {slot} holds no accumulator on this rank and no empty one was given")
            accumulator = empty[slot]()
        local.append(accumulator)
    ranks = Ranks(get_rank(group), get_world_size(group), communication_device(group))

    pieces = [(slot, name, kind, value) for slot, acc in enumerate(local) for name, kind, value in _pieces(acc)]
    agreed = _agree_on_shapes(pieces, group, ranks.device)
    merged_values = _run_rounds(
        [
            kind.sync(value, shape, ranks) if shape is not None else None
            for (_, _, kind, value), shape in zip(pieces, agreed)
        ],
        group,
        ranks.device,
    )
    by_slot: list[dict[str, Any]] = [{} for _ in range(slots)]
    for (slot, name, _, _), value in zip(pieces, merged_values):
        by_slot[slot][name] = value
    result: list[A | None] = []
    for slot, accumulator in enumerate(local):
        values = by_slot[slot]
        if all(value is None for value in values.values()):
            result.append(None)
            continue
        merged = accumulator.empty_like()
        home = _home(accumulator, devices[slot], ranks.device)
        kinds = merged.states.kinds
        merged.assign({name: None if value is None else kinds[name].to(value, home) for name, value in values.items()})
        result.append(merged)  # type: ignore[arg-type]
    return result


def merge_layer_states(
    states: Sequence[LayerState | None],
    empty: Sequence[Callable[[], LayerState]],
    group: Any = None,
    devices: Sequence[torch.device | None] | None = None,
) -> list[LayerState | None]:
    """Every slot's :class:`~delve.engine.layer_state.LayerState` (a layer and mode), over all ranks.

    ``empty[slot]()`` makes the fresh state of a slot this rank never
    recorded, so every rank joins the same collectives. A slot where no rank
    accumulated anything (no rows, no rejected batch) comes back ``None``.
    Outside a process group of several ranks each state is returned as it is.
    """
    if not is_distributed(group):
        return list(states)
    local = [state if state is not None else make() for state, make in zip(states, empty)]
    keys = [list(state.accumulators) for state in local]
    flat = [state.accumulators[key] for state, state_keys in zip(local, keys) for key in state_keys]
    flat_devices = None
    if devices is not None:
        flat_devices = [device for device, state_keys in zip(devices, keys) for _ in state_keys]
    merged = merge_across_ranks(flat, group, flat_devices)
    result: list[LayerState | None] = []
    position = 0
    for state, state_keys in zip(local, keys):
        accumulators = dict(zip(state_keys, merged[position : position + len(state_keys)]))
        position += len(state_keys)
        covariance = accumulators[state_keys[0]]
        if covariance is None:
            result.append(None)
            continue
        filled = {
            key: acc if acc is not None else state.accumulators[key].empty_like() for key, acc in accumulators.items()
        }
        result.append(LayerState(state.layer, state.mode, filled, state.forward_calls, state.rows_offered))
    return result


def _pieces(accumulator: Accumulator) -> list[tuple[str, StateKind, Any]]:
    values = accumulator.values()
    return [(name, kind, values[name]) for name, kind in accumulator.states.kinds.items()]


def _agree_on_shapes(
    pieces: list[tuple[int, str, StateKind, Any]], group: Any, device: torch.device
) -> list[tuple[int, ...] | None]:
    """Every piece's shape as all ranks agree on it (``None`` where no rank holds a value)."""
    count = len(pieces)
    largest = torch.full((count, DESCRIPTION_WIDTH), -1, dtype=torch.int64)
    negated_smallest = torch.full((count, DESCRIPTION_WIDTH), -_ABSENT, dtype=torch.int64)
    for index, (_, _, kind, value) in enumerate(pieces):
        description = kind.describe(value)
        if description is not None:
            padded = torch.zeros(DESCRIPTION_WIDTH, dtype=torch.int64)
            padded[: len(description)] = torch.tensor(description, dtype=torch.int64)
            largest[index] = padded
            negated_smallest[index] = -padded
    both = torch.stack([largest, negated_smallest]).to(device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    largest, smallest = both[0].cpu(), -both[1].cpu()
    agreed: list[tuple[int, ...] | None] = []
    for index, (slot, name, kind, _) in enumerate(pieces):
        if int(largest[index, 0]) < 0:
            agreed.append(None)
            continue
        high = tuple(int(v) for v in largest[index, : kind.described])
        low = tuple(int(v) for v in smallest[index, : kind.described])
        agreed.append(kind.agree(high, low, f"slot {slot}, state {name!r}"))
    return agreed


def _run_rounds(steps: list[Any], group: Any, device: torch.device) -> list[Any]:
    """Drive every piece's exchange in lockstep: one summed buffer per round, returned values at the end."""
    results: list[Any] = [None] * len(steps)
    pending: dict[int, list[torch.Tensor]] = {}
    for index, step in enumerate(steps):
        if step is not None:
            _advance(index, step, None, pending, results)
    while pending:
        order = sorted(pending)
        tensors = [tensor for index in order for tensor in pending[index]]
        sums = _summed(tensors, group, device)
        position = 0
        current = dict(pending)
        pending.clear()
        for index in order:
            size = len(current[index])
            _advance(index, steps[index], sums[position : position + size], pending, results)
            position += size
    return results


def _advance(index: int, step: Any, sent: list[torch.Tensor] | None, pending: dict, results: list[Any]) -> None:
    try:
        pending[index] = step.send(sent) if sent is not None else next(step)
    except StopIteration as done:
        results[index] = done.value


def _summed(tensors: list[torch.Tensor], group: Any, device: torch.device) -> list[torch.Tensor]:
    """The sums over ranks of ``tensors`` (float64), in buffers of at most :data:`ROUND_BYTES`."""
    flat = [tensor.reshape(-1).to(device, torch.float64) for tensor in tensors]
    out: list[torch.Tensor] = []
    start = 0
    while start < len(flat):
        stop, size = start, 0
        while stop < len(flat) and (stop == start or (size + flat[stop].numel()) * 8 <= ROUND_BYTES):
            size += flat[stop].numel()
            stop += 1
        buffer = torch.cat(flat[start:stop]) if stop - start > 1 else flat[start].clone()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
        out.extend(
            piece.view_as(tensor)
            for piece, tensor in zip(buffer.split([t.numel() for t in flat[start:stop]]), tensors[start:stop])
        )
        start = stop
    return out


def _home(accumulator: Accumulator, fallback: torch.device | None, communication: torch.device) -> torch.device:
    """Where a merged accumulator lives: where this rank's is, else the layer's device, else the collectives'."""
    for name, value in accumulator.values().items():
        if value is not None:
            return accumulator.states.kinds[name].device_of(value)
    return getattr(accumulator, "device", None) or fallback or communication
