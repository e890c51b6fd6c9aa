"""Affine layers: their input rows and weights, for the exact input route of the covariance.

For a layer whose output is an affine map of its input, ``y = W x + b``, with
weights fixed during its own forward pass, a batch's centred output scatter is
``W S_x W^T`` and its output mean ``W mean(x) + b``, with ``S_x`` the centred
scatter of its input rows: exact per batch, not an approximation. The input
route (:mod:`delve.engine.input_route`) uses that where the layer's narrow
side is its input. This module says, for a layer and one forward pass, which
input rows produce which output rows and through which weights
(:class:`AffineView`), or why it cannot (:class:`NotAffine`).

Only classes listed here, matched exactly (a subclass may have its own
``forward``), are affine: ``nn.Linear``, transformers' ``Conv1D`` (a Linear
with transposed weights), and convolutions of kernel size 1 (groups 1, no
padding; a stride reads every ``s``-th input position), observed channelwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .observation import ObservationConfig

__all__ = ["AffineView", "NotAffine", "affine_view", "affine_class"]


@dataclass(frozen=True)
class AffineView:
    """One forward pass of an affine layer, read as ``rows_out = rows_in W^T + b``.

    Attributes
    ----------
    rows : torch.Tensor
        ``(..., d_in)`` view of the input rows, in the order of the output's
        observation rows (same leading shape).
    weight : torch.Tensor
        ``(d_out, d_in)`` (a view of the layer's weight, not a copy).
    bias : torch.Tensor or None
        ``(d_out,)``.
    """

    rows: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None

    @property
    def features_in(self) -> int:
        return self.weight.shape[1]

    @property
    def features_out(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class NotAffine:
    """Why a forward pass cannot take the input route.

    ``expected`` is true for layers that are not affine in their input
    positions by design (a 3x3 convolution); false where an affine layer
    unexpectedly is not (sharded or quantized weights, an odd call), which
    is worth saying.
    """

    reason: str
    expected: bool = True


Reader = Callable[[nn.Module, tuple, ObservationConfig], "AffineView | NotAffine"]


def _plain(tensor: object, name: str) -> NotAffine | None:
    """Why a parameter cannot be read as a dense floating matrix (sharded, quantized, on meta), or ``None``."""
    if tensor is None:
        return None
    if type(tensor) not in (torch.Tensor, nn.Parameter):
        kind = type(tensor).__name__
        return NotAffine(f"its {name} is a {kind}, not a dense tensor (sharded or wrapped weights)", False)
    if not tensor.is_floating_point():  # type: ignore[union-attr]
        return NotAffine(f"its {name} has dtype {tensor.dtype} (quantized weights)", False)  # type: ignore[union-attr]
    if tensor.device.type == "meta":  # type: ignore[union-attr]
        return NotAffine(f"its {name} is on the meta device", False)
    return None


def _first_input(inputs: tuple) -> torch.Tensor | NotAffine:
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        return NotAffine("it was called with other than one tensor", False)
    x = inputs[0]
    if not x.is_floating_point():
        return NotAffine(f"its input has dtype {x.dtype}", False)
    return x


def _linear(module: nn.Module, inputs: tuple, config: ObservationConfig) -> AffineView | NotAffine:
    x = _first_input(inputs)
    if isinstance(x, NotAffine):
        return x
    reason = _plain(module.weight, "weight") or _plain(module.bias, "bias")
    if reason:
        return reason
    rows = x.unsqueeze(0) if x.ndim == 1 else x
    return AffineView(rows, module.weight, module.bias)  # type: ignore[arg-type]


def _transposed_linear(module: nn.Module, inputs: tuple, config: ObservationConfig) -> AffineView | NotAffine:
    # transformers' Conv1D: y = x @ weight + bias, weight of shape (d_in, d_out).
    x = _first_input(inputs)
    if isinstance(x, NotAffine):
        return x
    reason = _plain(getattr(module, "weight", None), "weight") or _plain(getattr(module, "bias", None), "bias")
    if reason:
        return reason
    return AffineView(x.unsqueeze(0) if x.ndim == 1 else x, module.weight.t(), module.bias)  # type: ignore[union-attr]


def _pointwise_conv(module: nn.Module, inputs: tuple, config: ObservationConfig) -> AffineView | NotAffine:
    x = _first_input(inputs)
    if isinstance(x, NotAffine):
        return x
    conv: nn.Conv1d = module  # type: ignore[assignment]
    if any(k != 1 for k in conv.kernel_size) or conv.groups != 1:
        return NotAffine("only 1x1 convolutions of one group are affine in their input positions")
    padding = conv.padding
    if (padding != "valid") if isinstance(padding, str) else any(p != 0 for p in padding):
        return NotAffine("its padding adds positions that read no input")
    if config.conv_method != "channelwise" or config.max_positions is not None or config.interpolation_strategy:
        return NotAffine("its output rows are not its positions (conv_method, max_positions or interpolation)")
    reason = _plain(conv.weight, "weight") or _plain(conv.bias, "bias")
    if reason:
        return reason
    spatial = len(conv.kernel_size)
    if x.ndim == spatial + 1:  # unbatched
        x = x.unsqueeze(0)
    index = (slice(None), slice(None), *(slice(None, None, s) for s in conv.stride))
    positions = x[index].flatten(2).transpose(1, 2)  # (N, positions read, C_in): a view
    return AffineView(positions, conv.weight.flatten(1), conv.bias)


_READERS: dict[type, Reader] = {
    nn.Linear: _linear,
    nn.Conv1d: _pointwise_conv,
    nn.Conv2d: _pointwise_conv,
    nn.Conv3d: _pointwise_conv,
}
_READERS_BY_PATH: dict[str, Reader] = {"transformers.pytorch_utils.Conv1D": _transposed_linear}


def affine_class(module: nn.Module) -> Reader | None:
    """The reader of ``module``'s exact class, or ``None`` when it is not a known affine layer.

    Subclasses are not matched: they may compute something else in their own ``forward``.

    Examples
    --------
    >>> affine_class(nn.Linear(2, 3)) is not None, affine_class(nn.ReLU()) is None
    (True, True)
    """
    klass = type(module)
    return _READERS.get(klass) or _READERS_BY_PATH.get(f"{klass.__module__}.{klass.__qualname__}")


def affine_view(module: nn.Module, inputs: tuple, config: ObservationConfig) -> AffineView | NotAffine:
    """The affine view of one forward pass of ``module``, or why there is none.

    Examples
    --------
    >>> layer = nn.Linear(3, 5)
    >>> view = affine_view(layer, (torch.randn(4, 3),), ObservationConfig())
    >>> view.rows.shape, view.features_out
    (torch.Size([4, 3]), 5)
    >>> affine_view(nn.Conv2d(3, 5, 3), (torch.randn(1, 3, 8, 8),), ObservationConfig()).reason
    'only 1x1 convolutions of one group are affine in their input positions'
    """
    reader = affine_class(module)
    if reader is None:
        return NotAffine(f"{type(module).__name__} is not a known affine layer")
    return reader(module, inputs, config)
