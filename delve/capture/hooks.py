"""The forward hooks on the user's layers: what they record, what they skip, and how they are removed.

A hook holds its layer's recorder (:class:`~delve.engine.recorder.LayerRecorder`) and a weak
reference to its owner (the tracker), so a tracker the user drops is collected
and removes its hooks instead of being kept alive by the model. A copy of the
model (pickle, ``copy.deepcopy``) gets an inert hook instead, so copies are
never tracked and copying never drags the tracker (locks, writers) along.

Three situations need care before a forward pass is recorded:

* ``torch.compile``: the recording is Python with locks and data-dependent
  branches, which Dynamo would trace into a graph with many breaks (or fail
  on). It runs outside the compiler instead: one graph break per tracked
  layer, the same statistics as eager.
* Activation checkpointing (``torch.utils.checkpoint``) runs the forward again
  inside backward to rebuild activations; that recomputation is skipped, so
  every batch is counted once.
* ``torch.inference_mode``: accumulators created there would be inference
  tensors that training could never update in place again.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..common.torch_features import is_compiling, reset_compiler

logger = logging.getLogger("delve")

__all__ = [
    "HookOwner",
    "Recorder",
    "ForwardOrder",
    "ForwardHook",
    "attach_hooks",
    "holds_compiled_wrapper",
    "reset_compiler_for",
    "module_device",
]


class HookOwner(Protocol):
    """What a hook needs of the object that owns it (the tracker)."""

    def is_recording(self) -> bool: ...


class Recorder(Protocol):
    """What a hook hands a forward pass to (:class:`delve.engine.recorder.LayerRecorder` is one)."""

    name: str

    def record(self, module: nn.Module, inputs: tuple, output: Any, mode: str) -> bool: ...


class ForwardOrder:
    """Layer names in the order of their first recorded forward pass (thread-safe).

    Examples
    --------
    >>> order = ForwardOrder()
    >>> order.note("fc2"); order.note("fc1"); order.note("fc2")
    >>> order.names()
    ['fc2', 'fc1']
    """

    def __init__(self) -> None:
        self._names: dict[str, None] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def note(self, name: str) -> None:
        """Record ``name`` if it is new."""
        if name not in self._names:  # the common case needs no lock
            with self._lock:
                self._names.setdefault(name)

    def names(self) -> list[str]:
        """The names noted so far, in order."""
        with self._lock:
            return list(self._names)

    def replace(self, names: Sequence[str]) -> None:
        """Start over from ``names`` (a restored checkpoint)."""
        with self._lock:
            self._names = dict.fromkeys(names)


class ForwardHook:
    """The callable registered on a user's module; see the module docstring."""

    __slots__ = ("order", "owner", "recorder")

    def __init__(self, owner: HookOwner, recorder: Recorder, order: ForwardOrder) -> None:
        self.owner = weakref.ref(owner)
        self.recorder = recorder
        self.order = order

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if is_compiling():
            _record_outside_compiler(self, module, inputs, output)
        else:
            self.record(module, inputs, output)

    def record(self, module: nn.Module, inputs: Any, output: Any) -> None:
        owner = self.owner()
        if owner is None or not owner.is_recording() or _in_backward():
            return
        recorder = self.recorder
        mode = "train" if module.training else "eval"
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                recorded = recorder.record(module, inputs, output, mode)
        else:
            recorded = recorder.record(module, inputs, output, mode)
        if recorded:
            self.order.note(recorder.name)

    def __reduce__(self) -> tuple:
        return (_inert_hook, ())


# torch._disable_dynamo defers importing Dynamo (seconds) until a compiled model
# first reaches a hook; torch.compiler.disable imports it at once.
_record_outside_compiler = getattr(torch, "_disable_dynamo", torch.compiler.disable)(ForwardHook.record)


def _in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread.

    A forward pass inside backward is activation checkpointing rebuilding
    what it dropped: the batch was recorded when it first went forward.
    """
    return _current_graph_task_id() != -1


def _no_graph_task() -> int:
    return -1


_current_graph_task_id = getattr(torch._C, "_current_graph_task_id", _no_graph_task)


def _inert_hook(*args: Any) -> Callable[..., None]:
    return _do_nothing


def _do_nothing(*args: Any) -> None:
    return None


def attach_hooks(
    owner: HookOwner, modules: Mapping[str, nn.Module], recorders: Mapping[str, Recorder], order: ForwardOrder
) -> list[RemovableHandle]:
    """Register one forward hook per layer; returns the handles that remove them."""
    return [
        module.register_forward_hook(ForwardHook(owner, recorders[name], order)) for name, module in modules.items()
    ]


def reset_compiler_for(modules: Any) -> None:
    """Reset ``torch.compile``'s caches when ``modules`` is a compiled model, so it calls new hooks."""
    if holds_compiled_wrapper(modules):
        logger.info("delve: resetting torch.compile caches so the compiled model calls the new hooks")
        reset_compiler()


def holds_compiled_wrapper(modules: Any) -> bool:
    """Whether ``modules`` is, or lists, a ``torch.compile`` wrapper of a model.

    Dynamo does not guard on module hooks: code it compiled before the hooks
    existed would run without ever calling them, so the tracker resets the
    compiler's caches when it finds one.
    """
    if isinstance(modules, nn.Module):
        candidates: list[Any] = [modules]
        if isinstance(modules, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            candidates.append(modules.module)
    elif isinstance(modules, Mapping):
        candidates = list(modules.values())
    else:
        candidates = list(modules)
    return any(isinstance(getattr(c, "_orig_mod", None), nn.Module) for c in candidates)


def module_device(module: nn.Module) -> torch.device:
    """Where a layer computes: its first parameter's or buffer's device, else the CPU."""
    for tensor in module.parameters(recurse=True):
        return tensor.device
    for tensor in module.buffers(recurse=True):
        return tensor.device
    return torch.device("cpu")
