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

__all__ = ["FORMAT", "Checkpointing", "pack_state", "check_state", "pack_streams", "restore_streams"]

#: Bump when the tracker state's outer layout changes.
FORMAT = 2
_REQUIRED = ("epoch", "layers", "forward_order")


def pack_state(epoch: int, forward_order: list[str], layers: dict[str, Any]) -> dict[str, Any]:
    """A tracker state from its parts.

    Examples
    --------
    >>> sorted(pack_state(2, ["fc"], {"fc": {}}))
    ['epoch', 'format', 'forward_order', 'layers']
    """
    return {"format": FORMAT, "epoch": int(epoch), "forward_order": list(forward_order), "layers": layers}


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


class Checkpointing:
    """:meth:`state_dict` and :meth:`load_state_dict` of :class:`~delve.SaturationTracker`, which holds the state."""

    # What the tracker holds and these methods use.
    epoch: int
    config: Any
    writer: Any
    _recorders: Any
    _forward_order: Any
    _settings: Any
    _savefile: Any

    def _devices(self) -> dict[str, torch.device]:
        """Where each layer's state lives (the tracker says)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this tracker exactly where it stands.

        Per layer and mode: the accumulators (float64, the co-moment as its
        upper triangle), the ``embed`` sample and the counters; plus the
        epoch, the forward order and the tracker's random streams (see
        :mod:`delve.tracking.checkpoint`). Tensors and plain types only: it loads with
        ``torch.load(path, weights_only=True)``. Under ``torch.distributed``
        each rank's state holds that rank's rows only.

        Examples
        --------
        >>> import io, torch
        >>> from torch import nn
        >>> from delve import SaturationTracker
        >>> model = nn.Linear(4, 3)
        >>> tracker = SaturationTracker("run", modules=model, nosave=True)
        >>> _ = model(torch.randn(10, 4))
        >>> buffer = io.BytesIO()
        >>> torch.save(tracker.state_dict(), buffer)
        >>> _ = buffer.seek(0)
        >>> state = torch.load(buffer, weights_only=True)
        >>> state["layers"]["linear"]["train"]["accumulators"]["covariance"]["moments"]["comoment_upper"].dtype
        torch.float64
        >>> tracker.close()
        """
        state = pack_state(self.epoch, self._forward_order.names(), self._recorders.state_dict())
        return {**state, **pack_streams(self.config.observation.generator, self._settings.sampler)}

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
        check_state(state, self._recorders)
        epoch = int(state["epoch"])
        self._savefile.continues = True  # a checkpoint continues the run on disk, if any
        if not self.writer.wrote and epoch > 0 and self.writer.resumed_at != epoch:
            self.writer.resume_from_saved_state(epoch)
        self.epoch = epoch
        self._forward_order.replace([name for name in state["forward_order"] if name in self._recorders])
        self._recorders.load_state_dict(state["layers"], self._devices())
        restore_streams(state, self.config.observation.generator, self._settings.sampler)
