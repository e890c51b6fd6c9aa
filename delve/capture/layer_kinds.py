"""The built-in observers: dense, convolution, recurrent and attention layers.

Each turns its layer's output into ``(..., d)`` rows as
:mod:`delve.capture.observation` describes, and into one ``(N, d)`` row per
sample for live probes (its pooling), and is registered for its module types
when :mod:`delve.capture` is imported. A new layer kind is one more
function here (or a user's :func:`~delve.capture.observation.register_observer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .observation import ObservationConfig, UnsupportedOutputError, register_observer

__all__ = [
    "observe_features_last",
    "observe_conv",
    "observe_recurrent",
    "observe_attention",
    "shrink_feature_map",
    "pool_features_last",
    "pool_conv",
    "pool_recurrent",
    "pool_attention",
]

_LINEAR_FAMILY = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _tensor_output(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    raise UnsupportedOutputError(f"expected a tensor output, got {type(output).__name__}")


# --------------------------------------------------------------------------- dense
def observe_features_last(module: nn.Module, output: object, config: ObservationConfig) -> torch.Tensor:
    """``(..., D)``: every leading index is a sample (a 1-D output is one sample)."""
    out = _tensor_output(output)
    return out.unsqueeze(0) if out.ndim == 1 else out


# ---------------------------------------------------------------------------- conv
def _spatial_dims(module: nn.Module) -> int:
    return len(module.kernel_size)  # type: ignore[arg-type]


def shrink_feature_map(out: torch.Tensor, strategy: str, largest_side: int) -> torch.Tensor:
    """Downsample ``(N, C, *spatial)`` so no side exceeds ``largest_side``.

    The aspect ratio is kept and nothing is ever upsampled.

    Examples
    --------
    >>> shrink_feature_map(torch.zeros(1, 3, 64, 32), "nearest", 16).shape
    torch.Size([1, 3, 16, 8])
    """
    spatial = out.shape[2:]
    longest = max(spatial)
    if longest <= largest_side:
        return out
    scale = largest_side / longest
    size = [max(1, round(side * scale)) for side in spatial]
    mode = strategy
    if strategy in _LINEAR_FAMILY.values() or strategy == "linear":
        mode = _LINEAR_FAMILY[len(spatial)]
    if mode == "bicubic" and len(spatial) != 2:
        raise ValueError("interpolation_strategy 'bicubic' applies to 2-D feature maps only")
    align = {} if mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
    return F.interpolate(out, size=size, mode=mode, **align)


def observe_conv(module: nn.Module, output: object, config: ObservationConfig) -> torch.Tensor:
    """``(N, C, *spatial)`` rows according to ``config.conv_method``."""
    out = _tensor_output(output)
    if out.ndim == _spatial_dims(module) + 1:  # unbatched input
        out = out.unsqueeze(0)
    if config.interpolation_strategy is not None:
        out = shrink_feature_map(out, config.interpolation_strategy, config.interpolation_downsampling)
    method = config.conv_method
    if method == "flatten":
        return out.flatten(1)
    maps = out.flatten(2)  # (N, C, S), a view
    if method == "channelwise":
        positions = maps.shape[-1]
        if config.max_positions is not None and positions > config.max_positions:
            # A strided view, no copy; the random start keeps every position
            # equally likely to be recorded over many batches.
            step = -(-positions // config.max_positions)
            maps = maps[:, :, _first_position(step, config.generator) :: step]
        return maps.transpose(1, 2)  # (N, S, C): every position is a sample
    if method == "mean":
        return maps.mean(-1)
    if method == "max":
        return maps.amax(-1)
    return maps.median(-1).values


def _first_position(step: int, generator: torch.Generator | None) -> int:
    """A uniform start in ``range(step)``, drawn on the CPU (no device synchronisation)."""
    if generator is None:
        return 0
    return int(torch.randint(step, (), generator=generator))


# ----------------------------------------------------------------------- recurrent
def observe_recurrent(module: nn.Module, output: object, config: ObservationConfig) -> torch.Tensor:
    """The output sequence of RNN/LSTM/GRU, never the hidden-state tuple."""
    sequence = output[0] if isinstance(output, tuple) else output
    last = config.timeseries_method == "last_timestep"
    if isinstance(sequence, PackedSequence):
        if not last:
            return sequence.data  # every valid step, no padding
        padded, lengths = pad_packed_sequence(sequence, batch_first=True)
        index = (lengths - 1).to(padded.device)
        return padded[torch.arange(padded.shape[0], device=padded.device), index]
    sequence = _tensor_output(sequence)
    if not last:
        return sequence  # (T, N, F) or (N, T, F) or (T, F): all steps are samples
    if sequence.ndim == 2:  # unbatched (T, F)
        return sequence[-1:]
    return sequence[:, -1] if getattr(module, "batch_first", False) else sequence[-1]


# ----------------------------------------------------------------------- attention
def observe_attention(module: nn.Module, output: object, config: ObservationConfig) -> torch.Tensor:
    """The attention output of MultiheadAttention; every token is a sample."""
    attended = output[0] if isinstance(output, tuple) else output
    return observe_features_last(module, attended, config)


# ------------------------------------------------------------ pooled per sample
def pool_features_last(module: nn.Module, output: object) -> torch.Tensor:
    """``(N, ..., D) -> (N, D)``: the mean over every axis between samples and features (tokens)."""
    out = _tensor_output(output)
    if out.ndim == 1:
        return out.unsqueeze(0)
    return out.mean(dim=tuple(range(1, out.ndim - 1))) if out.ndim > 2 else out


def pool_conv(module: nn.Module, output: object) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``: the mean over the positions of each map."""
    out = _tensor_output(output)
    if out.ndim == _spatial_dims(module) + 1:  # unbatched input
        out = out.unsqueeze(0)
    return out.flatten(2).mean(-1)


def pool_recurrent(module: nn.Module, output: object) -> torch.Tensor:
    """The output sequence averaged over its valid steps: ``(N, F)`` whether or not ``batch_first``."""
    sequence = output[0] if isinstance(output, tuple) else output
    if isinstance(sequence, PackedSequence):
        padded, lengths = pad_packed_sequence(sequence, batch_first=True)  # padding is zero
        return padded.sum(1) / lengths.to(padded.device, padded.dtype).unsqueeze(1)
    sequence = _tensor_output(sequence)
    if sequence.ndim == 2:  # unbatched (T, F)
        return sequence.mean(0, keepdim=True)
    return sequence.mean(1) if getattr(module, "batch_first", False) else sequence.mean(0)


def pool_attention(module: nn.Module, output: object) -> torch.Tensor:
    """MultiheadAttention's output averaged over tokens: ``(N, E)`` whether or not ``batch_first``."""
    attended = _tensor_output(output[0] if isinstance(output, tuple) else output)
    if attended.ndim == 2:  # unbatched (L, E)
        return attended.mean(0, keepdim=True)
    return attended.mean(1) if getattr(module, "batch_first", False) else attended.mean(0)


for _type in (nn.Linear, nn.Bilinear):
    register_observer(_type, observe_features_last, kind="linear", pool=pool_features_last)
for _type in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_observer(_type, observe_conv, kind="conv", pool=pool_conv)
for _type in (nn.RNN, nn.LSTM, nn.GRU):
    register_observer(_type, observe_recurrent, kind="recurrent", pool=pool_recurrent)
register_observer(nn.MultiheadAttention, observe_attention, kind="attention", pool=pool_attention)
# GPT-2's projections: a Linear with transposed weights, (..., features) outputs.
register_observer(
    "transformers.pytorch_utils.Conv1D", observe_features_last, kind="linear", pool=pool_features_last
)
