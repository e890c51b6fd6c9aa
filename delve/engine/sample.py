"""A bounded uniform sample of observation rows, kept on the rows' device (behind ``embed``).

Every row gets an independent uniform random key and the sample keeps the
``size`` rows with the smallest keys (a bottom-k sketch, the
:class:`~delve.engine.states.BottomK` state). That is a uniform sample without
replacement of everything seen since the last reset, computed with one
``topk`` per batch and no host synchronisation. The keys come from a private
generator, so tracking never changes the user's random stream.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch

from ..capture.rows import gather_rows
from ..common.validation import check_int
from .accumulator import Accumulator, AccumulatorContext, Batch
from .states import BottomK

__all__ = ["ReservoirSample"]


class ReservoirSample(Accumulator):
    """Keep a uniform random subset of at most ``size`` rows.

    Parameters
    ----------
    size : int
        Maximum number of rows kept.
    seed : int
        Seed of the private generator.

    Examples
    --------
    >>> sample = ReservoirSample(size=5)
    >>> for _ in range(3):
    ...     sample.add(torch.randn(4, 2))
    >>> sample.rows.shape
    torch.Size([5, 2])
    """

    state_version = 2

    def __init__(self, size: int = 500, seed: int = 0) -> None:
        super().__init__()
        self.size = check_int("size", size, 1, "a positive int")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.sample: tuple[torch.Tensor, torch.Tensor] | None
        self.add_state("sample", BottomK(self.size))

    @classmethod
    def create(cls, context: AccumulatorContext) -> ReservoirSample:
        """The sample of one layer and mode: independent keys per layer, mode and rank.

        Independent streams are what lets the ranks' samples merge into one
        uniform sample.
        """
        sample = cls(context.sample_size, seed=zlib.crc32(f"{context.seed}/{context.layer}/{context.mode}".encode()))
        sample.context = context
        return sample

    def empty_like(self) -> ReservoirSample:
        """An empty sample whose key stream continues this one's (a new epoch does not restart it)."""
        empty = ReservoirSample(self.size, self.seed)
        empty.context = self.context
        empty._generators = self._generators
        return empty

    @property
    def rows(self) -> torch.Tensor | None:
        """The kept rows (float64), or ``None`` before any was added.

        Rows of rejected batches (infinite keys) are left out.
        """
        if self.sample is None:
            return None
        keys, rows = self.sample
        return rows[torch.isfinite(keys)]

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return generator

    def accumulate(self, batch: Batch) -> None:
        """Offer the batch's rows, following the covariance's verdict."""
        self.add(batch.rows, batch.accepted)

    @torch.no_grad()
    def add(self, rows: torch.Tensor, accepted: bool | torch.Tensor = True) -> None:
        """Offer ``(..., d)`` rows to the sample; leading dimensions are samples.

        Only the rows kept are gathered from ``rows`` (a strided view is not
        copied whole). ``accepted`` is the verdict on the batch: ``False``
        offers nothing; a 0-d bool tensor (accelerators) gives a rejected
        batch's rows infinite keys, so they are never part of :attr:`rows`.
        """
        if accepted is False or rows.numel() == 0:
            return
        d = rows.shape[-1]
        n = rows.numel() // d
        keys = torch.rand(n, generator=self._generator(rows.device), device=rows.device, dtype=torch.float64)
        if isinstance(accepted, torch.Tensor):
            keys.masked_fill_(~accepted, math.inf)
        index = None
        if n > self.size:
            keys, index = torch.topk(keys, self.size, largest=False)
        offered = (keys, gather_rows(rows, index).to(torch.float64))
        self.sample = self.states.kinds["sample"].merge(self.sample, offered)

    def share_generators(self, other: ReservoirSample) -> None:
        """Draw keys from ``other``'s generators from now on (a fresh epoch continues its stream)."""
        self._generators = other._generators

    def extra_state(self) -> dict[str, Any]:
        """The generators' states: a restored sample continues exactly as if it had never stopped."""
        return {"generators": {str(device): generator.get_state() for device, generator in self._generators.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._generators = {}
        for device, generator_state in state.get("generators", {}).items():
            self._generator(torch.device(device)).set_state(generator_state)


def _declared_state(state: dict[str, Any]) -> dict[str, Any]:
    # Versions 0 and 1 kept keys and rows at the top level; version 2 under the declared name.
    state = dict(state)
    if "keys" in state:
        state["sample"] = {"keys": state.pop("keys"), "rows": state.pop("rows")}
    return state


ReservoirSample.migrations = {0: _declared_state, 1: _declared_state}
