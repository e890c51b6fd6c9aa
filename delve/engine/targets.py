"""The targets of the samples in the forward passes that follow, for live probes.

:meth:`delve.SaturationTracker.set_targets` puts them in a :class:`TargetSlot`
that every layer's recorder reads. Class indices become one-hot rows once per
call and device (every tracked layer of a forward pass shares them); real
values are used as they are. Nothing here runs inside a forward hook except
:meth:`Targets.for_samples`, which only reuses what was prepared.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

__all__ = ["Targets", "TargetSlot", "CLASSES", "VALUES"]

#: How targets are kept in a probe's state: class indices or real values.
CLASSES, VALUES = 1, 2


@dataclass
class Targets:
    """Validated targets of one batch.

    Attributes
    ----------
    values : torch.Tensor
        ``(N,)`` int64 class indices, or ``(N, c)`` real values.
    kind : int
        :data:`CLASSES` or :data:`VALUES`.
    width : int
        Columns of the target rows: the number of classes (one-hot), or ``c``.
    """

    values: torch.Tensor
    kind: int
    width: int
    _prepared: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def samples(self) -> int:
        """``N``, the number of samples the targets are for."""
        return self.values.shape[0]

    @classmethod
    def of(cls, targets: torch.Tensor, num_classes: int | None = None, seen_classes: int = 0) -> Targets:
        """Check ``targets`` and tell classes from real values.

        Integer tensors of shape ``(N,)`` are class indices; floating tensors
        of shape ``(N,)`` or ``(N, c)`` are real values. The number of classes
        is ``num_classes`` when given, else one more than the largest index
        seen so far (reading the largest index of accelerator targets waits
        for them: pass ``num_classes`` to avoid it).

        Examples
        --------
        >>> Targets.of(torch.tensor([2, 0, 1])).width
        3
        >>> Targets.of(torch.tensor([0.5, 1.5])).values.shape
        torch.Size([2, 1])
        """
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"targets must be a torch.Tensor or None, got {type(targets).__name__}")
        if targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(f"targets must be integer class indices or real values, got dtype {targets.dtype}")
        if not targets.is_floating_point():
            if targets.ndim != 1:
                raise ValueError(
                    f"class targets must have shape (N,), got {tuple(targets.shape)}; token-level labels "
                    "are not supported (pool them to one label per sample)"
                )
            values = targets.detach().to(torch.int64)
            if num_classes is not None:
                width = int(num_classes)
                if width < 1:
                    raise ValueError(f"num_classes must be at least 1, got {num_classes}")
            else:
                width = max(seen_classes, int(values.max()) + 1 if values.numel() else 0)
            if values.numel() and values.device.type == "cpu":
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= width:
                    raise ValueError(f"class indices must lie in 0..{width - 1}, got {low}..{high}")
            return cls(values, CLASSES, max(width, 1))
        if targets.ndim not in (1, 2):
            raise ValueError(f"real-valued targets must have shape (N,) or (N, c), got {tuple(targets.shape)}")
        values = targets.detach()
        values = values.unsqueeze(1) if values.ndim == 1 else values
        return cls(values, VALUES, values.shape[1])

    def for_samples(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(rows, labels)`` on ``device``: ``(N, width)`` float64 target rows (one-hot for classes) and,
        for classes, the ``(N,)`` float64 class indices (``None`` for real values).
        """
        prepared = self._prepared.get(device)
        if prepared is None:
            with self._lock:
                values = self.values.to(device, non_blocking=device.type != "cpu")
                if self.kind == CLASSES:
                    rows = torch.zeros(values.shape[0], self.width, dtype=torch.float64, device=device)
                    rows.scatter_(1, values.unsqueeze(1), 1.0)
                    labels = values.to(torch.float64)
                else:
                    rows, labels = values.to(torch.float64), None
                prepared = self._prepared[device] = (rows, labels)
        return prepared


class TargetSlot:
    """Where the tracker puts the current targets and every recorder reads them.

    A reference swap: a forward pass sees the targets set before it began.
    """

    def __init__(self) -> None:
        self.current: Targets | None = None
        self._classes = 0

    def set(self, targets: torch.Tensor | None, num_classes: int | None = None) -> None:
        """The targets of the forward passes that follow; ``None`` stops."""
        if targets is None:
            self.current = None
            return
        checked = Targets.of(targets, num_classes, self._classes)
        if checked.kind == CLASSES:
            self._classes = max(self._classes, checked.width)
        self.current = checked
