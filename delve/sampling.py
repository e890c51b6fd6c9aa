"""A bounded uniform sample of observation rows, kept on the rows' device.

Every row gets an independent uniform random key and the sample keeps the
``size`` rows with the smallest keys (a bottom-k sketch). That is a uniform
sample without replacement of everything seen since the last reset, computed
with one ``topk`` per batch and no host synchronisation. The keys come from a
private generator, so tracking never changes the user's random stream.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ReservoirSample"]


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
        if size < 1:
            raise ValueError(f"size must be a positive int, got {size}")
        self.size = size
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.reset()

    def reset(self) -> None:
        """Drop every kept row."""
        self._keys: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    @property
    def rows(self) -> torch.Tensor | None:
        """The kept rows (float64), or ``None`` before any was added."""
        return self._rows

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return generator

    @torch.no_grad()
    def add(self, rows: torch.Tensor) -> None:
        """Offer ``(n, d)`` rows to the sample."""
        n = rows.shape[0]
        if n == 0:
            return
        keys = torch.rand(n, generator=self._generator(rows.device), device=rows.device, dtype=torch.float64)
        if n > self.size:
            keys, index = torch.topk(keys, self.size, largest=False)
            rows = rows[index]
        rows = rows.to(torch.float64)
        if self._rows is not None:
            keys = torch.cat([self._keys, keys])  # type: ignore[list-item]
            rows = torch.cat([self._rows, rows])
            if keys.shape[0] > self.size:
                keys, index = torch.topk(keys, self.size, largest=False)
                rows = rows[index]
        self._keys, self._rows = keys, rows

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
