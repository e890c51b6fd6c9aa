"""A bounded uniform sample of observation rows, kept on the rows' device.

Every row gets an independent uniform random key and the sample keeps the
``size`` rows with the smallest keys (a bottom-k sketch). That is a uniform
sample without replacement of everything seen since the last reset, computed
with one ``topk`` per batch and no host synchronisation. The keys come from a
private generator, so tracking never changes the user's random stream.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..common.ranks import communication_device, get_rank, get_world_size
from ..common.torch_features import unravel_index
from ..common.validation import check_int

__all__ = ["ReservoirSample", "RowSampler"]

#: Row counts whose runs :class:`RowSampler` keeps made (more distinct shapes start afresh).
_MAX_STRATA = 256
#: Key of the batch coin's state in :meth:`RowSampler.state_dict` (the other keys are devices).
_BATCHES_KEY = "batches"


class ReservoirSample:
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

    def __init__(self, size: int = 500, seed: int = 0) -> None:
        self.size = check_int("size", size, 1, "a positive int")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.reset()

    def reset(self) -> None:
        """Drop every kept row."""
        self._keys: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    @property
    def rows(self) -> torch.Tensor | None:
        """The kept rows (float64), or ``None`` before any was added.

        Rows of rejected batches (infinite keys) are left out.
        """
        if self._rows is None:
            return None
        return self._rows[torch.isfinite(self._keys)]  # type: ignore[arg-type]

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return generator

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
        rows = _gather(rows, index).to(torch.float64)
        if self._rows is not None:
            keys = torch.cat([self._keys, keys])  # type: ignore[list-item]
            rows = torch.cat([self._rows, rows])
            if keys.shape[0] > self.size:
                keys, index = torch.topk(keys, self.size, largest=False)
                rows = rows[index]
        self._keys, self._rows = keys, rows

    def merge(self, other: ReservoirSample) -> ReservoirSample:
        """Add another sample's rows, in place: the union's smallest keys, as one sample of both streams.

        Examples
        --------
        >>> a, b = ReservoirSample(size=4), ReservoirSample(size=4, seed=1)
        >>> a.add(torch.zeros(3, 2)); b.add(torch.ones(3, 2))
        >>> a.merge(b).rows.shape
        torch.Size([4, 2])
        """
        if other._rows is None:
            return self
        keys, rows = other._keys, other._rows
        if self._rows is not None:
            keys = torch.cat([self._keys, keys.to(self._keys.device)])  # type: ignore[union-attr,arg-type]
            rows = torch.cat([self._rows, rows.to(self._rows.device)])
        if keys.shape[0] > self.size:  # type: ignore[union-attr]
            keys, index = torch.topk(keys, self.size, largest=False)  # type: ignore[arg-type]
            rows = rows[index]
        self._keys, self._rows = keys, rows
        return self

    def merged_across_ranks(self, num_features: int, group: Any = None) -> ReservoirSample:
        """A new sample of the rows of every ``torch.distributed`` rank (this one is left untouched).

        The smallest keys of the union are a uniform sample of every rank's
        rows together, as if one process had seen them all. Each rank puts its
        keys and rows in its own slot of a ``(world, size)`` buffer and one
        sum over ranks assembles them: no matrix is gathered per rank, and
        every rank gets the same sample.
        """
        world, rank = get_world_size(group), get_rank(group)
        device = communication_device(group)
        # Each rank fills only its own slot; the other slots stay zero, so one sum assembles them all.
        keys = torch.zeros(world, self.size, dtype=torch.float64, device=device)
        rows = torch.zeros(world, self.size, num_features, dtype=torch.float64, device=device)
        present = torch.zeros(world, self.size, dtype=torch.float64, device=device)
        if self._rows is not None:
            own = self._keys.to(device)  # type: ignore[union-attr]
            valid = torch.isfinite(own)  # infinite keys: rows of rejected batches
            kept = own.shape[0]
            keys[rank, :kept] = torch.where(valid, own, torch.zeros_like(own))
            rows[rank, :kept] = self._rows.to(device)
            present[rank, :kept] = valid.to(torch.float64)
        for tensor in (keys, rows, present):
            torch.distributed.all_reduce(tensor, group=group)
        keys = torch.where(present > 0, keys, torch.full_like(keys, math.inf)).flatten()
        merged = ReservoirSample(self.size, self.seed)
        available = int((present > 0).sum())
        if available:
            keys, index = torch.topk(keys, min(self.size, available), largest=False)
            home = self._rows.device if self._rows is not None else device
            merged._keys, merged._rows = keys.to(home), rows.flatten(0, 1)[index].to(home)
        return merged

    def share_generators(self, other: ReservoirSample) -> None:
        """Draw keys from ``other``'s generators from now on (a fresh epoch continues its stream)."""
        self._generators = other._generators

    def state_dict(self) -> dict[str, Any]:
        """Kept keys and rows and the generators' states, tensors only.

        Restoring it continues the sample exactly as if it had never stopped.

        Examples
        --------
        >>> sample = ReservoirSample(size=3)
        >>> sample.add(torch.randn(5, 2))
        >>> copy = ReservoirSample(size=3)
        >>> copy.load_state_dict(sample.state_dict())
        >>> torch.equal(copy.rows, sample.rows)
        True
        """
        state: dict[str, Any] = {
            "generators": {str(device): generator.get_state() for device, generator in self._generators.items()}
        }
        if self._rows is not None:
            state["keys"] = self._keys.clone()  # type: ignore[union-attr]
            state["rows"] = self._rows.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` produced."""
        self.reset()
        self._generators = {}
        for device, generator_state in state.get("generators", {}).items():
            self._generator(torch.device(device)).set_state(generator_state)
        if "rows" in state:
            self._keys = state["keys"].clone()
            self._rows = state["rows"].clone()


class RowSampler:
    """Choose which rows of a batch are kept under a budget, from generators of its own.

    ``k`` rows of ``n`` are drawn by stratified sampling: the batch is cut into
    ``k`` runs of consecutive rows (equal up to one row) and one row is drawn
    uniformly from each, so every row is kept with probability ``k / n`` (up
    to the runs' rounding), no row twice, and the kept rows spread over the
    batch (over samples and positions alike). The draw needs ``O(k)`` random
    numbers, made on the rows' device by a generator seeded independently of
    the data and of the user's random streams; no value is read back. Which
    batches a layer with a small share draws from (:mod:`delve.budget.allocation`) is a
    coin tossed by a CPU generator of its own, so it needs no device either.

    Parameters
    ----------
    seed : int
        Seed of the generators (one per device).

    Examples
    --------
    >>> sampler = RowSampler(seed=0)
    >>> kept = sampler.select(torch.arange(20.0).view(10, 2), 4)
    >>> kept.shape
    torch.Size([4, 2])
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        # A layer draws the same k of n rows batch after batch: its runs are made once.
        self._strata: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # Which batches a layer draws from is decided on the host: a CPU coin never waits for a device.
        self._batches = torch.Generator().manual_seed(seed + 1)

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
            generator.manual_seed(self.seed)
        return generator

    def indices(self, n: int, k: int, device: torch.device) -> torch.Tensor:
        """``k`` distinct indices in ``range(n)``, one per run of about ``n / k`` rows."""
        strata = self._strata.get((n, k, device))
        if strata is None:
            if len(self._strata) >= _MAX_STRATA:  # shapes that keep changing (varying sequence lengths)
                self._strata.clear()
            edges = torch.div(torch.arange(k + 1, device=device) * n, k, rounding_mode="floor")
            strata = self._strata[(n, k, device)] = (edges[:-1], (edges[1:] - edges[:-1]).to(torch.float64))
        starts, sizes = strata
        draw = torch.rand(k, generator=self._generator(device), device=device, dtype=torch.float64)
        # The offset within a run is added as an integer: in float64 a large start could round it up a run.
        return draw.mul_(sizes).long().add_(starts)

    def chance(self, probability: float) -> bool:
        """``True`` with ``probability``: whether this batch is one a layer draws rows from.

        Examples
        --------
        >>> sampler = RowSampler(seed=0)
        >>> sampler.chance(1.0), sampler.chance(0.0)
        (True, False)
        """
        return float(torch.rand((), generator=self._batches, dtype=torch.float64)) < probability

    def select(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        """``k`` of the ``(..., d)`` rows, as a ``(k, d)`` tensor (the only copy made)."""
        n = rows.numel() // rows.shape[-1]
        return _gather(rows, self.indices(n, k, rows.device))

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, so a restored run draws the same rows from the same batches."""
        state = {str(device): generator.get_state() for device, generator in self._generators.items()}
        return {**state, _BATCHES_KEY: self._batches.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (one saved before batches were drawn from restarts their coin)."""
        state = dict(state)
        batches = state.pop(_BATCHES_KEY, None)
        self._batches = torch.Generator().manual_seed(self.seed + 1)
        if batches is not None:
            self._batches.set_state(batches)
        self._generators = {}
        for device, generator_state in state.items():
            self._generator(torch.device(device)).set_state(generator_state)


def _gather(rows: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``(..., d)`` ``rows`` at flat sample positions ``index`` (all when ``None``), as ``(m, d)``."""
    d = rows.shape[-1]
    if index is None:
        return rows.reshape(-1, d)
    if rows.ndim == 2 or rows.is_contiguous():
        return rows.reshape(-1, d).index_select(0, index)
    if rows.ndim == 3:  # a convolution's (N, H*W, C) view: two integer ops, not a general unravel
        per_sample = rows.shape[1]
        return rows[torch.div(index, per_sample, rounding_mode="floor"), torch.remainder(index, per_sample)]
    return rows[unravel_index(index, tuple(rows.shape[:-1]))]
