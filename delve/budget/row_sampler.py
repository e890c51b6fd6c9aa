"""Which rows of a batch a layer keeps under a budget: a stratified draw from generators of its own."""

from __future__ import annotations

from typing import Any

import torch

from ..capture.rows import gather_rows

__all__ = ["RowSampler"]

#: Row counts whose runs :class:`RowSampler` keeps made (more distinct shapes start afresh).
_MAX_STRATA = 256
#: Key of the batch coin's state in :meth:`RowSampler.state_dict` (the other keys are devices).
_BATCHES_KEY = "batches"


class RowSampler:
    """Choose which rows of a batch are kept under a budget, from generators of its own.

    ``k`` rows of ``n`` are drawn by stratified sampling: the batch is cut into
    ``k`` runs of consecutive rows (equal up to one row) and one row is drawn
    uniformly from each, so every row is kept with probability ``k / n`` (up
    to the runs' rounding), no row twice, and the kept rows spread over the
    batch (over samples and positions alike). The draw needs ``O(k)`` random
    numbers, made on the rows' device by a generator seeded independently of
    the data and of the user's random streams; no value is read back. Which
    batches a layer with a small share draws from (:mod:`delve.budget.cost_model`) is a
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
        return gather_rows(rows, self.indices(n, k, rows.device))

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
