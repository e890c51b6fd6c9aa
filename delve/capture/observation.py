"""Observers: how a layer's output becomes observation rows, and their registry.

An *observer* maps ``(module, output, config)`` to a tensor of shape
``(..., d)`` whose leading dimensions are all samples: ``d`` is the layer's
feature size. Observers return views where they can; the covariance update
gathers and upcasts a strided view in a single pass.

The registry is keyed by module type and looked up along the type's MRO, so
subclasses of ``nn.Linear`` or ``nn.Conv2d`` are handled like their bases.
The built-in observers are in :mod:`delve.capture.layer_kinds`; users add
theirs with :func:`register_observer`. Which layers a tracker finds in a model
follows from this registry alone (:mod:`delve.capture.discovery`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..common.validation import check_choice, check_int, check_optional_int

__all__ = [
    "CONV_METHODS",
    "TIMESERIES_METHODS",
    "INTERPOLATION_STRATEGIES",
    "ObservationConfig",
    "Observer",
    "ObserverEntry",
    "Pooler",
    "register_observer",
    "find_observer",
    "supported_classes",
    "observe",
    "UnsupportedOutputError",
]

CONV_METHODS = ("channelwise", "mean", "max", "median", "flatten")
TIMESERIES_METHODS = ("last_timestep", "timestepwise")
INTERPOLATION_STRATEGIES = ("nearest", "nearest-exact", "area", "linear", "bilinear", "bicubic", "trilinear")


class UnsupportedOutputError(TypeError):
    """A layer produced an output that no observer can turn into rows."""


@dataclass(frozen=True)
class ObservationConfig:
    """How outputs become rows; fixed for the lifetime of a tracker.

    Attributes
    ----------
    conv_method : str
        One of :data:`CONV_METHODS`.
    timeseries_method : str
        One of :data:`TIMESERIES_METHODS`.
    interpolation_strategy : str or None
        ``None`` keeps feature maps as they are; otherwise a mode of
        :func:`torch.nn.functional.interpolate` used to shrink large maps.
    interpolation_downsampling : int
        Largest spatial side kept when shrinking.
    max_positions : int or None
        ``channelwise`` only: record at most about this many spatial
        positions per feature map (every ``k``-th position from a random
        start, ``k = ceil(positions / max_positions)``). ``None`` records all.
    generator : torch.Generator or None
        A CPU generator that draws the random start under ``max_positions``
        (the tracker owns one and saves it in its ``state_dict``, so a
        restored run draws the same positions); ``None`` starts at position 0.
    """

    conv_method: str = "channelwise"
    timeseries_method: str = "last_timestep"
    interpolation_strategy: str | None = None
    interpolation_downsampling: int = 32
    max_positions: int | None = None
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("conv_method", self.conv_method, CONV_METHODS)
        check_choice("timeseries_method", self.timeseries_method, TIMESERIES_METHODS)
        if self.interpolation_strategy is not None:
            check_choice("interpolation_strategy", self.interpolation_strategy, INTERPOLATION_STRATEGIES)
        check_int("interpolation_downsampling", self.interpolation_downsampling, 1, "a positive int")
        check_optional_int("max_positions", self.max_positions, minimum=1)


Observer = Callable[[nn.Module, object, ObservationConfig], torch.Tensor]
Pooler = Callable[[nn.Module, object], torch.Tensor]


@dataclass(frozen=True)
class ObserverEntry:
    """A registered observer, the kind of layer it serves (``"conv"`` etc.) and its pooling per sample.

    ``pool(module, output)`` returns the ``(N, d)`` features of the ``N``
    samples of a batch: the output averaged over every axis but samples and
    features (positions, tokens). Live probes read those; ``None`` where a
    layer kind cannot say which axis holds its samples.
    """

    observer: Observer
    kind: str
    pool: Pooler | None = None


_REGISTRY: dict[type, ObserverEntry] = {}
# Types named by their import path ("transformers.pytorch_utils.Conv1D"): known without importing
# their library, matched when a model holds one.
_BY_PATH: dict[str, ObserverEntry] = {}


def register_observer(
    module_type: type[nn.Module] | str,
    observer: Observer,
    kind: str = "custom",
    replace: bool = False,
    pool: Pooler | None = None,
) -> None:
    """Teach delve how to read the output of ``module_type`` (and its subclasses).

    Parameters
    ----------
    module_type : type or str
        An ``nn.Module`` subclass, or its import path (``"package.module.Class"``)
        for a class of a library that need not be installed or imported:
        nothing is imported, the path is matched against the classes of the
        models delve is given. Modules of this type are tracked when a whole
        model is handed to the tracker.
    observer : callable
        ``observer(module, output, config) -> Tensor`` of shape ``(..., d)``,
        leading dimensions being samples. ``config`` is an
        :class:`ObservationConfig`.
    kind : str
        A label; ``"conv"`` layers are dropped by ``include_conv=False``.
    replace : bool
        Allow replacing the observer already registered for exactly this type
        (built-ins included); without it such a duplicate raises. Subclasses
        of a registered type may always get their own observer.
    pool : callable, optional
        ``pool(module, output) -> Tensor`` of shape ``(N, d)``: one row per
        sample, the output averaged over every other axis but the features.
        Live probes (``stats=["probe"]``) need it; without it they skip the
        layer and say so once.

    Examples
    --------
    >>> from torch import nn
    >>> class Scale(nn.Module):
    ...     def forward(self, x):
    ...         return {"features": 2 * x}
    >>> register_observer(Scale, lambda module, output, config: output["features"])
    """
    if not callable(observer):
        raise ValueError("observer must be callable as observer(module, output, config)")
    if pool is not None and not callable(pool):
        raise ValueError("pool must be callable as pool(module, output) -> (samples, features) tensor")
    if isinstance(module_type, str):
        if not _CLASS_PATH.match(module_type):
            raise ValueError(f"a class path looks like 'package.module.Class', got {module_type!r}")
        registry: dict[Any, ObserverEntry] = _BY_PATH
        label = module_type
    elif isinstance(module_type, type) and issubclass(module_type, nn.Module):
        registry, label = _REGISTRY, module_type.__name__
    else:
        raise ValueError(f"module_type must be an nn.Module subclass or its import path, got {module_type!r}")
    if module_type in registry and not replace:
        raise ValueError(f"an observer is already registered for {label}; pass replace=True to replace it")
    registry[module_type] = ObserverEntry(observer, kind, pool)


_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def supported_classes() -> list[str]:
    """The names of the module classes that have an observer (built-in and registered), in registration order.

    Examples
    --------
    >>> supported_classes()[:2]
    ['Linear', 'Bilinear']
    """
    return [klass.__name__ for klass in _REGISTRY] + [path.rsplit(".", 1)[1] for path in _BY_PATH]


def find_observer(module: nn.Module) -> ObserverEntry | None:
    """The registered observer for ``module``'s type or its nearest base class."""
    for klass in type(module).__mro__:
        entry = _REGISTRY.get(klass)
        if entry is None and _BY_PATH:
            entry = _BY_PATH.get(f"{klass.__module__}.{klass.__qualname__}")
        if entry is not None:
            return entry
    return None


def observe(
    module: nn.Module, output: object, config: ObservationConfig, layer: str, entry: ObserverEntry | None = None
) -> torch.Tensor:
    """Rows of ``module``'s output, raising a clear error for outputs it cannot read.

    ``entry`` is the module's observer when the caller already looked it up
    (the recorder does so once, not at every forward pass).
    """
    entry = entry or find_observer(module)
    if entry is None:
        raise UnsupportedOutputError(_unsupported_message(module, output, layer))
    try:
        rows = entry.observer(module, output, config)
    except UnsupportedOutputError as error:
        # Built-in observers only know the output; the message must name the layer.
        raise UnsupportedOutputError(_unsupported_message(module, output, layer)) from error
    if not isinstance(rows, torch.Tensor) or rows.ndim < 1 or not rows.is_floating_point():
        raise UnsupportedOutputError(_unsupported_message(module, output, layer))
    return rows


def _unsupported_message(module: nn.Module, output: object, layer: str) -> str:
    shown = (
        f"tensor of shape {tuple(output.shape)} and dtype {output.dtype}"
        if isinstance(output, torch.Tensor)
        else type(output).__name__
    )
    return (
        f"delve cannot turn the output of layer {layer!r} ({type(module).__name__}) into "
        f"observations: got {shown}. Register an observer that returns a floating "
        f"(samples, features) tensor: delve.register_observer({type(module).__name__}, "
        f"lambda module, output, config: ...), or exclude the layer with ignore_layer_names."
    )
