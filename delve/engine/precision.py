"""Which precision a layer's products use on its device, and where its float64 state can live.

The running state is float64 everywhere. The per-batch Gram product is
float64 where that is fast (CPUs, and GPUs with a fast float64 path) and
float32 where float64 runs 32 to 64 times slower (consumer GPUs): that is
``precision="auto"``. Apple's MPS has no float64 at all, so a layer there
keeps its state on the CPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["PRECISIONS", "FAST_FLOAT64_CAPABILITIES", "resolve_precision", "state_device", "tf32_products"]

logger = logging.getLogger("delve")

#: What ``precision=`` accepts: "auto" picks float64 or float32 products by device.
PRECISIONS = ("auto", "float64", "float32", "tf32")
#: CUDA compute capabilities with a fast float64 path (A100, H100/H200, B200): float64 products there.
FAST_FLOAT64_CAPABILITIES = frozenset({(8, 0), (9, 0), (10, 0)})
_announced: set[tuple[str, str]] = set()


def resolve_precision(requested: str, device: torch.device) -> str:
    """The product precision ``requested`` means on ``device``: "float64", "float32" or "tf32".

    ``"auto"`` gives float64 products on CPUs and on GPUs with a fast float64
    path (:data:`FAST_FLOAT64_CAPABILITIES`), float32 products elsewhere
    (consumer GPUs, where float64 runs 32 to 64 times slower); the running
    state is float64 either way. ``"tf32"`` is float32 with TensorFloat-32
    matrix products on CUDA (Ampere and later), plain float32 elsewhere. The
    choice for a device is logged once (a warning when it is float32).

    Examples
    --------
    >>> resolve_precision("auto", torch.device("cpu")), resolve_precision("tf32", torch.device("cpu"))
    ('float64', 'float32')
    """
    resolved = requested
    if requested == "auto":
        fast = device.type == "cpu" or (
            device.type == "cuda" and torch.cuda.get_device_capability(device) in FAST_FLOAT64_CAPABILITIES
        )
        resolved = "float64" if fast else "float32"
        _announce(device, resolved)
    elif requested == "tf32" and device.type != "cuda":
        resolved = "float32"
    return resolved


def _announce(device: torch.device, resolved: str) -> None:
    key = (str(device), resolved)
    if key in _announced:
        return
    _announced.add(key)
    if resolved == "float64":
        logger.info("delve: float64 products on %s (precision='auto')", device)
    else:
        warnings.warn(
            f"delve: float32 products on {device}, whose float64 is slow (precision='auto'); the running state "
            "stays float64, each product's relative error is below 1e-6. precision='float64' makes them exact.",
            UserWarning,
            stacklevel=6,
        )


def state_device(device: torch.device) -> torch.device:
    """Where a layer's float64 state can live when its outputs are on ``device``.

    Apple's MPS has no float64, so such a layer's state stays on the CPU (its
    rows are copied there at every batch); the first time, a warning says so.

    Examples
    --------
    >>> state_device(torch.device("mps"))  # doctest: +SKIP
    device(type='cpu')
    """
    if device.type != "mps":
        return device
    if ("mps", "state") not in _announced:
        _announced.add(("mps", "state"))
        warnings.warn(
            "delve: MPS has no float64; the tracked layers' accumulators stay on the CPU and each batch's "
            "outputs are copied there (pass device='cpu' to say so and silence this)",
            UserWarning,
            stacklevel=6,
        )
    return torch.device("cpu")


@contextmanager
def tf32_products(enabled: bool) -> Iterator[None]:
    """TensorFloat-32 for CUDA float32 products inside the block, as it was afterwards.

    PyTorch's switch is process-wide; it is set only around delve's own
    products, and another thread multiplying at that moment would use it too.
    """
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = previous
