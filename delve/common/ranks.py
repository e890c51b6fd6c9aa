"""Where this process stands in ``torch.distributed``: rank, world size, the device collectives take.

Every function works outside a process group too (rank 0 of 1), so code that
calls them runs unchanged in a single process.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "communication_device"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group``, or 0 outside ``torch.distributed``.

    Examples
    --------
    >>> get_rank()
    0
    """
    return dist.get_rank(group) if _initialized() else 0


def get_world_size(group: Any = None) -> int:
    """Number of processes in ``group``, or 1 outside ``torch.distributed``.

    Examples
    --------
    >>> get_world_size()
    1
    """
    return dist.get_world_size(group) if _initialized() else 1


def is_distributed(group: Any = None) -> bool:
    """Whether a process group with more than one rank is active.

    Examples
    --------
    >>> is_distributed()
    False
    """
    return get_world_size(group) > 1


def communication_device(group: Any = None) -> torch.device:
    """The device whose tensors ``group``'s backend can reduce.

    NCCL only moves CUDA tensors; gloo and the others take CPU tensors.
    """
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
