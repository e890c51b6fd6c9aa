"""What the framework callbacks share: argument checks, the tracker they build, their checkpoint state.

Nothing here imports a training framework, so the pieces are tested without one.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..output.report import format_report
from ..tracking.parameters import TrackerConfig
from ..tracking.tracker import SaturationTracker

__all__ = [
    "STATE_FORMAT",
    "missing_framework",
    "check_tracker_arguments",
    "build_tracker",
    "scalar_metrics",
    "TARGET_KEYS",
    "batch_targets",
    "checkpoint_state",
    "restore_checkpoint_state",
    "report_text",
]

#: Layout version of the dictionaries :func:`checkpoint_state` returns.
STATE_FORMAT = 1

# Arguments whose check needs the real model or process group; they are checked when the tracker is built.
_NEEDS_MODEL = ("layer_filter", "ignore_layer_names", "include_conv", "process_group", "verbose")
# Arguments the callbacks decide themselves.
_RESERVED = {
    "modules": "the callback tracks the model the trainer trains; choose layers with layer_filter= "
    "or ignore_layer_names=",
    "nosave": "delve's own writers write only when save_to= or savefile= is given",
}


def missing_framework(module: str, package: str, extra: str) -> ImportError:
    """The error an integration module raises when its framework is not installed.

    Examples
    --------
    >>> print(missing_framework("delve.integrations.lightning", "lightning", "lightning"))
    delve.integrations.lightning needs the 'lightning' package: pip install 'delve[lightning]'
    """
    return ImportError(f"{module} needs the {package!r} package: pip install 'delve[{extra}]'")


def check_tracker_arguments(
    owner: str,
    savefile: str | None,
    save_to: Any,
    stats: Sequence[str],
    tracker_kwargs: Mapping[str, Any],
) -> None:
    """Raise at construction what the tracker would only raise once training has started.

    :class:`~delve.tracking.parameters.TrackerConfig` runs the tracker's own checks
    (statistic keys, thresholds, writer keys, unknown keyword arguments) with
    its own messages, without a model. Checks that need the model (layer
    names) or the process group (ranks) wait for the real tracker.

    Raises
    ------
    ValueError
        For a bad value, or an argument the callback sets itself.
    TypeError
        For an argument :class:`~delve.SaturationTracker` does not take.

    Examples
    --------
    >>> check_tracker_arguments("SaturationCallback", None, None, ["lsat", "idim"], {})
    >>> check_tracker_arguments("SaturationCallback", None, None, ["nope"], {})
    Traceback (most recent call last):
    ...
    ValueError: ...
    """
    for key, reason in _RESERVED.items():
        if key in tracker_kwargs:
            raise ValueError(f"{owner} does not take {key}=: {reason}")
    options = {key: value for key, value in tracker_kwargs.items() if key not in _NEEDS_MODEL}
    # No process group exists yet (ddp_spawn starts it later): the rank checks wait for the real tracker.
    options["sync_ranks"] = False
    try:
        TrackerConfig.from_arguments(
            savefile if savefile is not None else "delve",
            save_to=save_to if save_to is not None else "csv",
            stats=stats,
            nosave=True,
            **options,
        )
    except TypeError as error:
        raise TypeError(f"{owner}: {error} (keyword arguments go to delve.SaturationTracker)") from error


#: Keys under which a dict batch holds its targets, in the order they are looked for.
TARGET_KEYS = ("labels", "label", "targets", "target", "y")


def batch_targets(batch: Any) -> torch.Tensor | None:
    """The targets of a batch for live probes: ``y`` of an ``(x, y, ...)`` batch, or a dict's labels.

    ``None`` when the batch holds none of them (no probe rows for it).

    Examples
    --------
    >>> batch_targets((torch.zeros(2, 3), torch.tensor([0, 1])))
    tensor([0, 1])
    >>> batch_targets({"input_ids": torch.zeros(2, 4), "labels": torch.tensor([1, 0])})
    tensor([1, 0])
    >>> batch_targets(torch.zeros(2, 3)) is None
    True
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor):
                return value
    return None


def build_tracker(
    model: nn.Module,
    savefile: str | None,
    save_to: Any,
    stats: Sequence[str],
    tracker_kwargs: Mapping[str, Any],
    default_savefile: Callable[[], str],
) -> SaturationTracker:
    """The tracker a callback attaches to ``model``.

    delve's own writers stay silent (``nosave=True``) unless ``save_to`` or
    ``savefile`` was given; then they write under ``savefile``, or under
    ``default_savefile()`` (the trainer's log folder) when only ``save_to``
    was given.
    """
    writes = savefile is not None or save_to is not None
    path = savefile if savefile is not None else (default_savefile() if writes else "delve")
    return SaturationTracker(
        path,
        save_to=save_to if save_to is not None else "csv",
        modules=model,
        stats=stats,
        nosave=not writes,
        **tracker_kwargs,
    )


def scalar_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, int | float]:
    """The scalar values of :meth:`~delve.SaturationTracker.add_saturations` as Python numbers.

    Array statistics (``cov``, ``embed``) are left out: loggers of scalars
    cannot hold them, delve's own writers do.

    Examples
    --------
    >>> import numpy as np
    >>> scalar_metrics({"train-saturation_fc": 0.5, "train-covariance-matrix_fc": np.eye(2)}, "delve/")
    {'delve/train-saturation_fc': 0.5}
    """
    metrics: dict[str, int | float] = {}
    for name, value in values.items():
        if isinstance(value, np.ndarray) and value.ndim > 0:
            continue
        if isinstance(value, torch.Tensor):
            value = value.item()
        # JSON logs (Hugging Face's log_history) take Python numbers, not numpy ones.
        metrics[prefix + name] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return metrics


def report_text(tracker: SaturationTracker) -> str | None:
    """The tracker's report as the callbacks print it when training ends; ``None`` before any epoch was computed.

    Examples
    --------
    >>> from torch import nn
    >>> with SaturationTracker("run", modules=nn.Linear(4, 2), nosave=True) as tracker:
    ...     print(report_text(tracker))
    ...     _ = tracker.layers[0].module(torch.randn(64, 4))
    ...     _ = tracker.add_saturations()
    ...     print(report_text(tracker).splitlines()[0])
    None
    delve report, epoch 0: 1 layer, no findings
    """
    report = tracker.report()
    if report.empty:
        return None
    return format_report(report, tracker.run_record, tracker.epoch - 1)


def _group_rank_and_size(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, Mapping):
        return {key: _to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(value) for value in state)
    return state


def checkpoint_state(tracker: SaturationTracker, **extra: Any) -> dict[str, Any]:
    """The tracker state of every rank, for a checkpoint written by the first rank.

    Each rank holds only the rows it saw since the last
    :meth:`~delve.SaturationTracker.add_saturations`; a checkpoint taken in
    the middle of an epoch needs all of them to continue exactly. Under
    ``torch.distributed`` this is a collective: every rank of the tracker's
    process group must call it at the same point, as trainers do when they
    build a checkpoint. The first rank of the group receives every rank's
    state (on the CPU); the others get their own only.

    Returns
    -------
    dict
        ``{"format", "ranks": [state of rank 0, rank 1, ...], **extra}``,
        tensors and plain types only (loadable with ``weights_only=True``).
    """
    state = _to_cpu(tracker.state_dict())
    group = tracker.process_group
    rank, size = _group_rank_and_size(group)
    ranks: list[Any] = [state]
    if size > 1:
        gathered: list[Any] | None = [None] * size if rank == 0 else None
        destination = dist.get_global_rank(group, 0) if group is not None else 0
        dist.gather_object(state, gathered, dst=destination, group=group)
        if gathered is not None:
            ranks = gathered
    return {"format": STATE_FORMAT, "ranks": ranks, **extra}


def restore_checkpoint_state(tracker: SaturationTracker, state: Mapping[str, Any]) -> None:
    """Load what :func:`checkpoint_state` saved: each rank takes its own rows back.

    A job resumed on more ranks than it was saved from starts the extra ranks
    empty, at the saved epoch. On fewer ranks, the rows that the missing
    ranks had recorded since the last epoch are lost (nothing is lost for a
    checkpoint taken at an epoch boundary); a warning says so.

    Raises
    ------
    ValueError
        If ``state`` was not written by :func:`checkpoint_state`.
    """
    if not isinstance(state, Mapping) or not isinstance(state.get("ranks"), Sequence) or not state["ranks"]:
        raise ValueError("not a delve callback state: expected a dict with a non-empty 'ranks' list")
    if int(state.get("format", STATE_FORMAT)) > STATE_FORMAT:
        raise ValueError(f"the callback state has format {state['format']}, newer than this delve's; upgrade delve")
    ranks = state["ranks"]
    rank, size = _group_rank_and_size(tracker.process_group)
    if rank < len(ranks):
        tracker.load_state_dict(ranks[rank])
    else:
        # Epoch and layer order from the first rank, none of its rows.
        tracker.load_state_dict(ranks[0])
        tracker.reset()
    if len(ranks) > size and rank == 0:
        warnings.warn(
            f"delve: the checkpoint holds the tracker state of {len(ranks)} ranks but the job runs on {size}; "
            f"rows that ranks {size}..{len(ranks) - 1} recorded in the checkpoint's epoch are left out",
            RuntimeWarning,
            stacklevel=3,
        )
