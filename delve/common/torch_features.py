"""The few PyTorch features whose spelling changed across the supported versions, in one place.

Each function uses the current API and falls back to the older spelling, so
the declared floor (see ``setup.py``) stays true. Nothing here is needed on a
current PyTorch; the fallbacks are exercised by the floor check that the
documentation describes.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "aminmax",
    "autocast_enabled",
    "hooks_leave_transformer_fast_path",
    "is_compiling",
    "reset_compiler",
    "unravel_index",
]


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
    # Before PyTorch 2.3, torch._dynamo.is_compiling would import Dynamo
    # (seconds per process, minutes for parallel ranks on a busy machine);
    # torch._utils.is_compiling is False in eager code and Dynamo treats it as
    # the constant True while tracing, without being imported.
    return torch._utils.is_compiling()


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


def aminmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and the largest value of ``x`` as 0-d tensors (NaN when ``x`` holds one).

    Examples
    --------
    >>> [float(v) for v in aminmax(torch.tensor([3.0, -1.0, 2.0], dtype=torch.float16))]
    [-1.0, 3.0]
    """
    if x.dtype == torch.float16 and x.device.type == "cpu" and not _cpu_half_aminmax():
        return x.min(), x.max()  # two passes, but each reduction has a CPU float16 kernel
    low, high = torch.aminmax(x)
    return low, high


@functools.cache
def _cpu_half_aminmax() -> bool:
    """Whether ``torch.aminmax`` has a CPU float16 kernel (PyTorch 2.1 has none)."""
    try:
        torch.aminmax(torch.zeros(1, dtype=torch.float16))
    except RuntimeError:
        return False
    return True


@functools.cache
def hooks_leave_transformer_fast_path() -> bool:
    """Whether ``nn.TransformerEncoderLayer`` leaves its fused inference path for hooked submodules.

    In evaluation mode without gradients the layer can run as one fused
    kernel that never calls its submodules, so their forward hooks (and
    delve) would miss those passes. Current PyTorch takes the ordinary path
    when a submodule carries a forward hook; PyTorch 2.1 does not check. The
    answer is measured on a tiny layer, once.

    Examples
    --------
    >>> isinstance(hooks_leave_transformer_fast_path(), bool)
    True
    """
    layer = torch.nn.TransformerEncoderLayer(4, nhead=2, dim_feedforward=8, dropout=0.0, batch_first=True).eval()
    fired: list[bool] = []
    layer.linear1.register_forward_hook(lambda *args: fired.append(True))
    with torch.no_grad():
        layer(torch.zeros(1, 2, 4))
    return bool(fired)
