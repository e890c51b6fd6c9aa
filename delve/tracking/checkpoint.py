"""The layout of a tracker's ``state_dict``, the checks a state must pass before it is loaded, and the methods.

A tracker state is a dict of tensors, ints, strings, lists and dicts only, so
it loads with ``torch.load(path, weights_only=True)``::

    {"format": 2, "epoch": 3, "forward_order": ["conv1", ...],
     "layers": {"conv1": {"train": {"accumulators": {"covariance": {...}, "dorm": {...}},
                                    "forward_calls": 12, "rows_offered": 3072}}},
     "positions_generator": <uint8 tensor>,     # only with max_positions
     "row_sampler": {"cpu": <uint8 tensor>, "batches": <uint8 tensor>}}  # only with max_overhead

Each accumulator versions its own part (``Accumulator.state_version`` and
``migrations``, :mod:`delve.engine.accumulator`). Format 1 kept each layer's
covariance, its statistics' accumulators (``extras``) and the ``embed`` sample
under keys of their own; it still loads (:mod:`delve.engine.layer_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["FORMAT", "pack_state", "check_state", "pack_streams", "restore_streams"]

#: Bump when the tracker state's outer layout changes.
FORMAT = 2
_REQUIRED = ("epoch", "layers", "forward_order")


def pack_state(epoch: int) -> dict[str, Any]:
    """The run's part of a tracker state (the recording adds the layers, their order and the streams).

    Examples
    --------
    >>> pack_state(2)
    {'format': 2, 'epoch': 2}
    """
    return {"format": FORMAT, "epoch": int(epoch)}


def pack_streams(positions: torch.Generator | None, rows: Any = None) -> dict[str, Any]:
    """The states of the tracker's own random streams: ``max_positions``' generator, the budget's row sampler.

    Examples
    --------
    >>> sorted(pack_streams(torch.Generator()))
    ['positions_generator']
    """
    state: dict[str, Any] = {}
    if positions is not None:
        state["positions_generator"] = positions.get_state()
    if rows is not None:
        state["row_sampler"] = rows.state_dict()
    return state


def restore_streams(state: Mapping[str, Any], positions: torch.Generator | None, rows: Any = None) -> None:
    """Restore what :func:`pack_streams` saved into the streams that exist (a stream absent from the state stays)."""
    if positions is not None and "positions_generator" in state:
        positions.set_state(state["positions_generator"])
    if rows is not None and "row_sampler" in state:
        rows.load_state_dict(state["row_sampler"])


def check_state(state: Any, tracked: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``state`` is a tracker state this delve can load for these layers.

    Examples
    --------
    >>> check_state({"epoch": 0, "layers": {"fc2": {}}, "forward_order": []}, ["fc1"])
    Traceback (most recent call last):
    ...
    ValueError: state holds layers this tracker does not track: ['fc2']; tracked: ['fc1']
    """
    if not isinstance(state, Mapping) or not set(_REQUIRED) <= set(state):
        raise ValueError("not a SaturationTracker state: expected the keys 'epoch', 'layers', 'forward_order'")
    if int(state.get("format", FORMAT)) > FORMAT:
        raise ValueError(f"the state has format {state['format']}, newer than this delve's {FORMAT}; upgrade delve")
    tracked = set(tracked)
    unknown = set(state["layers"]) - tracked
    if unknown:
        raise ValueError(
            f"state holds layers this tracker does not track: {sorted(unknown)}; tracked: {sorted(tracked)}"
        )
