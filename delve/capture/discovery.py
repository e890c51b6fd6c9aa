"""Find the layers a tracker should watch and give them stable names."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..common.naming import layer_name
from .observation import ObserverEntry, find_observer, supported_classes

__all__ = [
    "TrackedLayer",
    "discover_layers",
    "describe_module",
    "unwrap_model",
    "untracked_weighted_classes",
    "LayerFilter",
]

LayerFilter = Callable[[str], bool] | str | Sequence[str] | None


@dataclass(frozen=True)
class TrackedLayer:
    """A module to hook, the name used in every output, its kind and its observer."""

    name: str
    module: nn.Module
    kind: str
    qualified_name: str
    observer: ObserverEntry | None = None

    @property
    def description(self) -> str:
        """The module's class and shape (:func:`describe_module`)."""
        return describe_module(self.module)


def describe_module(module: nn.Module) -> str:
    """A layer's class and shape as figures and tables show it: ``Linear 256->256``.

    Read from the attributes PyTorch's layers keep (features, channels,
    sizes, ``embed_dim``); a module without them is named by its class.

    Examples
    --------
    >>> describe_module(nn.Linear(256, 128)), describe_module(nn.Conv2d(3, 16, 3))
    ('Linear 256->128', 'Conv2d 3->16')
    >>> describe_module(nn.LSTM(8, 32, bidirectional=True)), describe_module(nn.MultiheadAttention(64, 4))
    ('LSTM 8->2x32', 'MultiheadAttention 64')
    """
    name = type(module).__name__
    for source, target in (("in_features", "out_features"), ("in_channels", "out_channels"), ("nx", "nf")):
        inputs, outputs = getattr(module, source, None), getattr(module, target, None)
        if isinstance(inputs, int) and isinstance(outputs, int):  # nx, nf: transformers' GPT-2 Conv1D
            return f"{name} {inputs}->{outputs}"
    inputs, hidden = getattr(module, "input_size", None), getattr(module, "hidden_size", None)
    if isinstance(inputs, int) and isinstance(hidden, int):
        return f"{name} {inputs}->{'2x' if getattr(module, 'bidirectional', False) else ''}{hidden}"
    width = getattr(module, "embed_dim", None)
    return f"{name} {width}" if isinstance(width, int) else name


def unwrap_model(module: nn.Module) -> nn.Module:
    """Strip DataParallel / DistributedDataParallel / torch.compile wrappers.

    Names then stay the user's own (``features-0``, not ``module-features-0``).
    """
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


def _walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Supported layers under ``module``, depth first in registration order.

    A tracked layer's own children are not visited: MultiheadAttention's
    ``out_proj`` is not called through its forward, for example.
    """
    if find_observer(module) is not None:
        yield prefix, module
        return
    for child_name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{child_name}" if prefix else child_name)


def _roots(modules: object) -> list[nn.Module]:
    if isinstance(modules, nn.Module):
        return [unwrap_model(modules)]
    values = modules.values() if isinstance(modules, Mapping) else modules
    return [unwrap_model(m) for m in values if isinstance(m, nn.Module)]  # type: ignore[union-attr]


def untracked_weighted_classes(modules: object) -> list[str]:
    """Classes of leaf modules holding a weight matrix that no observer knows (embeddings excepted).

    Such a module computes a projection delve could track but does not: a
    custom layer, or a library's own linear layer. Those inside a tracked
    layer (MultiheadAttention's ``out_proj``) are its business.

    Examples
    --------
    >>> class Gate(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.ones(3, 3))
    >>> import torch
    >>> untracked_weighted_classes(nn.Sequential(nn.Linear(3, 3), Gate(), nn.Embedding(5, 3)))
    ['Gate']
    """
    found: dict[str, None] = {}

    def visit(module: nn.Module) -> None:
        if find_observer(module) is not None:
            return
        children = list(module.children())
        if not children:
            weighted = any(p.ndim >= 2 for p in module.parameters(recurse=False))
            if weighted and not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                found.setdefault(type(module).__qualname__)
        for child in children:
            visit(child)

    for root in _roots(modules):
        visit(root)
    return list(found)


def _candidates(modules: object) -> list[tuple[str, str, nn.Module]]:
    """``(display name, qualified name, module)`` for every supported layer."""
    found: list[tuple[str, str, nn.Module]] = []
    if isinstance(modules, nn.Module):
        root = unwrap_model(modules)
        for qualified, module in _walk(root, ""):
            found.append((layer_name(qualified) or type(module).__name__.lower(), qualified, module))
    elif isinstance(modules, Mapping):
        for key, module in modules.items():
            _require_module(module, f"modules[{key!r}]")
            for qualified, sub in _walk(unwrap_model(module), ""):
                full = f"{key}.{qualified}" if qualified else str(key)
                found.append((layer_name(full), full, sub))
    elif isinstance(modules, Iterable) and not isinstance(modules, (str, bytes)):
        for index, module in enumerate(modules):
            _require_module(module, f"modules[{index}]")
            for qualified, sub in _walk(unwrap_model(module), ""):
                full = f"layer{index}.{qualified}" if qualified else f"layer{index}"
                found.append((layer_name(full), full, sub))
    else:
        raise ValueError(
            "modules must be an nn.Module, a list of modules or a dict of name -> module; "
            f"got {type(modules).__name__}"
        )
    return found


def _require_module(module: object, where: str) -> None:
    if not isinstance(module, nn.Module):
        raise ValueError(f"{where} must be an nn.Module, got {type(module).__name__}")


def _patterns(value: str | Sequence[str] | None, argument: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    patterns = list(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{argument} entries must be strings (names or globs), got {pattern!r}")
    return patterns


def _matches(pattern: str, qualified: str) -> bool:
    """A pattern selects a layer when it matches the layer or one of its parents.

    Both spellings of a name are accepted: ``features.0`` and ``features-0``.
    """
    parts = qualified.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(layer_name(prefix), pattern):
            return True
    return False


def discover_layers(
    modules: object,
    layer_filter: LayerFilter = None,
    ignore_layer_names: str | Sequence[str] = (),
    include_conv: bool = True,
) -> list[TrackedLayer]:
    """The layers to track, in module registration order.

    Parameters
    ----------
    modules : nn.Module, list of nn.Module or dict of str -> nn.Module
        A model is searched recursively for every supported layer kind; a list
        gets positional names (``layer0``, ``layer1-0``...); a dict's keys are
        used as name prefixes.
    layer_filter : callable, str or list of str, optional
        A callable receives a layer's name and returns whether to keep it.
        Strings are names or shell-style globs of submodules (``features.*``);
        a pattern that names a container selects every layer inside it.
    ignore_layer_names : str or list of str
        Names or globs of layers to leave out.
    include_conv : bool
        ``False`` drops every convolution.

    Raises
    ------
    ValueError
        If a name or glob matches nothing, or nothing is left to track.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    >>> [layer.name for layer in discover_layers(model)]
    ['0', '2']
    >>> [layer.name for layer in discover_layers(model, include_conv=False)]
    ['2']
    """
    candidates = _candidates(modules)
    seen_modules: set[int] = set()
    unique = []
    for display, qualified, module in candidates:
        if id(module) not in seen_modules:  # a module shared between branches is hooked once
            seen_modules.add(id(module))
            unique.append((display, qualified, module))
    candidates = unique

    ignore = _patterns(ignore_layer_names, "ignore_layer_names")
    _require_matches(ignore, candidates, "ignore_layer_names")
    candidates = [c for c in candidates if not any(_matches(p, c[1]) for p in ignore)]

    if callable(layer_filter):
        candidates = [c for c in candidates if layer_filter(c[0])]
    else:
        wanted = _patterns(layer_filter, "layer_filter")
        if wanted:
            _require_matches(wanted, candidates, "layer_filter")
            candidates = [c for c in candidates if any(_matches(p, c[1]) for p in wanted)]

    layers = []
    for display, qualified, module in candidates:
        entry = find_observer(module)
        assert entry is not None
        if entry.kind == "conv" and not include_conv:
            continue
        layers.append(TrackedLayer(display, module, entry.kind, qualified, entry))
    if not layers:
        raise ValueError(
            f"nothing to track: no layer of a kind delve observes ({', '.join(supported_classes())}) "
            "is left after filtering (see layer_filter, ignore_layer_names, include_conv, "
            "or delve.register_observer for other kinds)"
        )
    names = [layer.name for layer in layers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"several tracked layers share the names {duplicates}; pass a dict of unique names")
    untracked = untracked_weighted_classes(modules)
    if untracked:
        warnings.warn(
            f"delve does not track modules of the classes {', '.join(untracked)}: they hold weight matrices "
            "but no observer knows their output. Register one with delve.register_observer(TheClass, "
            "lambda module, output, config: output) to track them.",
            UserWarning,
            stacklevel=3,
        )
    return layers


def _require_matches(patterns: list[str], candidates: list[tuple[str, str, nn.Module]], argument: str) -> None:
    for pattern in patterns:
        if not any(_matches(pattern, qualified) for _, qualified, _ in candidates):
            known = ", ".join(display for display, _, _ in candidates) or "(none)"
            raise ValueError(f"{argument} entry {pattern!r} matches no tracked layer; layers: {known}")
