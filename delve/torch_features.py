"""The few PyTorch features whose spelling changed across the supported versions, in one place.

Each function uses the current API and falls back to the older spelling, so
the declared floor (see ``setup.py``) stays true. Nothing here is needed on a
current PyTorch; the fallbacks are exercised by the floor check that the
documentation describes.
"""

from __future__ import annotations

import torch

__all__ = ["autocast_enabled", "is_compiling", "reset_compiler", "unravel_index"]


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; ``False`` for types autocast does not know.

    Examples
    --------
    >>> autocast_enabled("cpu")
    False
    """
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # before PyTorch 2.4 the query took no device type
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not support (e.g. "meta")
        return False


def is_compiling() -> bool:
    """Whether ``torch.compile`` (Dynamo) is tracing the current code.

    Examples
    --------
    >>> is_compiling()
    False
    """
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # PyTorch before 2.3


def reset_compiler() -> None:
    """Drop everything ``torch.compile`` has compiled, so hooks added since are called."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "reset"):
        compiler.reset()
    else:  # PyTorch before 2.2
        torch._dynamo.reset()


def unravel_index(index: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Flat indices into a tensor of ``shape`` as a tuple of coordinate tensors.

    Examples
    --------
    >>> [t.tolist() for t in unravel_index(torch.tensor([0, 5]), (2, 3))]
    [[0, 1], [0, 2]]
    """
    if hasattr(torch, "unravel_index"):
        return tuple(torch.unravel_index(index, shape))
    coordinates = []
    for size in reversed(shape):  # PyTorch before 2.2
        coordinates.append(index % size)
        index = torch.div(index, size, rounding_mode="floor")
    return tuple(reversed(coordinates))
