"""What a live linear probe needs: moments of pooled features and targets, and a bounded sample of them.

A least-squares probe of a layer's features ``x`` (the output averaged per
sample, :mod:`delve.capture.layer_kinds`) for targets ``y`` (one-hot rows for
classes) needs only the means and the covariance of ``[x, y]``: its ridge
solution is ``(Sxx + lambda I)^-1 Sxy`` (:mod:`delve.statistics.probes`). So
:class:`ProbeMoments` keeps their count, mean and co-moment, merged exactly
like a layer's covariance, across batches and ranks. A probe's accuracy needs
each sample's prediction, so it also keeps a uniform sample of ``[x, class]``
rows: every row while they fit in :data:`PROBE_SAMPLE_BYTES`, a uniform
sample of that many bytes beyond. Offered rows wait in a list until a
quarter of that is pending, then join the sample in one selection: merging
every batch into the growing sample would copy it whole each time.
"""

from __future__ import annotations

import math
import zlib

import torch

from .accumulator import Accumulator, AccumulatorContext, Batch
from .moments import Moments, merge_centred, merge_slice_on_device
from .products import all_finite, decides_on_device, feature_blocks
from .states import BottomK, Comoments, Fact
from .targets import CLASSES, VALUES

__all__ = ["ProbeMoments", "PROBE_SAMPLE_BYTES"]

#: Largest sample of pooled rows kept per layer and mode for a probe's accuracy (float64 rows).
PROBE_SAMPLE_BYTES = 16 * 2**20


class ProbeMoments(Accumulator):
    """Moments of ``[pooled features, targets]`` per sample, and a sample of ``[features, class]`` rows.

    Fed only by forward passes that had targets (:meth:`delve.SaturationTracker.set_targets`).

    Examples
    --------
    >>> probe = ProbeMoments()
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> labels = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    >>> one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> probe.accumulate(Batch(x, samples=x, targets=one_hot, labels=labels))
    >>> probe.settle()  # brings the sample up to date before it is read
    >>> probe.features, probe.joint.count, probe.sample[1].shape
    (2, 3, torch.Size([3, 3]))
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # offered (keys, rows), not yet selected
        self._pending_rows = 0
        self.features: int | None
        self.target_kind: int | None
        self.joint: Moments | None
        self.sample: tuple[torch.Tensor, torch.Tensor] | None
        self.add_state("features", Fact())
        self.add_state("target_kind", Fact())
        self.add_state("joint", Comoments(growable=True))
        self.add_state("sample", BottomK(max_bytes=PROBE_SAMPLE_BYTES))

    @classmethod
    def create(cls, context: AccumulatorContext) -> ProbeMoments:
        """The probe of one layer and mode; its sample's keys are independent per layer, mode and rank."""
        probe = cls(seed=zlib.crc32(f"{context.seed}/{context.layer}/{context.mode}/probe".encode()))
        probe.context = context
        return probe

    def empty_like(self) -> ProbeMoments:
        empty = ProbeMoments(self.seed)
        empty.context = self.context
        empty._generators = self._generators  # the key stream continues across epochs
        return empty

    @property
    def classes(self) -> bool:
        """Whether the targets were class indices."""
        return self.target_kind == CLASSES

    @torch.no_grad()
    def accumulate(self, batch: Batch) -> None:
        """Merge the batch's pooled features and targets (nothing when it had no targets)."""
        if batch.samples is None or batch.targets is None:
            return
        x = batch.samples.to(torch.float64)
        d = x.shape[1]
        kind = CLASSES if batch.labels is not None else VALUES
        if self.features is not None and (self.features != d or self.target_kind != kind):
            raise ValueError(
                f"layer {self.context.layer!r}: the probe's features or the kind of targets changed within an "
                f"epoch ({self.features} features, {self._kind_word(self.target_kind)} before; {d} and "
                f"{self._kind_word(kind)} now)"
            )
        self.features, self.target_kind = d, kind
        joint = torch.cat([x, batch.targets], dim=1)
        accepted = self._merge(joint, batch.accepted)
        if batch.labels is not None:
            self._offer(torch.cat([x, batch.labels.unsqueeze(1)], dim=1), accepted)

    def _merge(self, joint: torch.Tensor, verdict: bool | torch.Tensor) -> bool | torch.Tensor:
        """Merge ``[x, y]`` rows; the covariance's verdict and the rows' own finiteness must both allow it."""
        width = joint.shape[1]
        moments = self.joint
        if moments is None:
            moments = self.joint = Moments(
                torch.zeros(width, dtype=torch.float64, device=joint.device),
                torch.zeros(width, width, dtype=torch.float64, device=joint.device),
                feature_blocks(width),
            )
            self.restored()
        elif moments.mean.shape[0] < width:  # a class not seen before: its one-hot column was zero so far
            counters = moments.device_count, moments.device_rejected
            moments = self.joint = moments.widened(width)
            moments.device_count, moments.device_rejected = counters
        if decides_on_device(joint.device):
            # The pooled rows may hold NaN that the rows kept by a budget did not: judged here too.
            judged = all_finite(joint) if verdict is True else all_finite(joint) & verdict
            return merge_slice_on_device(moments, joint, torch.float64, judged)
        if verdict is False or not bool(all_finite(joint)):
            return False
        return merge_centred(moments, joint, torch.float64)

    def _offer(self, rows: torch.Tensor, accepted: bool | torch.Tensor) -> None:
        """Offer ``[x, class]`` rows to the bounded sample (rejected rows get infinite keys or none at all)."""
        if accepted is False:
            return
        generator = self._generators.get(rows.device)
        if generator is None:
            generator = self._generators[rows.device] = torch.Generator(device=rows.device).manual_seed(self.seed)
        keys = torch.rand(rows.shape[0], generator=generator, device=rows.device, dtype=torch.float64)
        if isinstance(accepted, torch.Tensor):
            keys.masked_fill_(~accepted, math.inf)
        self._pending.append((keys, rows))
        self._pending_rows += rows.shape[0]
        if self._pending_rows * 4 >= self.states.kinds["sample"].capacity(rows.shape[1]):
            self._select()

    def _select(self) -> None:
        """Merge the pending rows into the sample: one concatenation and one selection for all of them."""
        if not self._pending:
            return
        keys = torch.cat([keys for keys, _ in self._pending])
        rows = torch.cat([rows for _, rows in self._pending])
        self._pending, self._pending_rows = [], 0
        self.sample = self.states.kinds["sample"].merge(self.sample, (keys, rows))

    def assign(self, values: dict) -> None:
        self._pending, self._pending_rows = [], 0  # replaced state: what was pending belonged to the old one
        super().assign(values)

    def settle(self) -> None:
        self._select()
        moments = self.joint
        if moments is not None and moments.device_count is not None:
            moments.count = int(moments.device_count.item())

    def restored(self) -> None:
        moments = self.joint
        if moments is None:
            return
        if decides_on_device(moments.mean.device):
            moments.device_count = torch.tensor(moments.count, dtype=torch.int64, device=moments.mean.device)
            moments.device_rejected = torch.zeros((), dtype=torch.int64, device=moments.mean.device)
        else:
            moments.device_count = moments.device_rejected = None

    def extra_state(self) -> dict:
        return {"generators": {str(device): generator.get_state() for device, generator in self._generators.items()}}

    def load_extra_state(self, state: dict) -> None:
        self._generators = {}
        for device, generator_state in state.get("generators", {}).items():
            generator = torch.Generator(device=torch.device(device))
            generator.set_state(generator_state)
            self._generators[torch.device(device)] = generator

    @staticmethod
    def _kind_word(kind: int | None) -> str:
        return "class targets" if kind == CLASSES else "real-valued targets"

    def __repr__(self) -> str:
        count = 0 if self.joint is None else self.joint.count
        return f"ProbeMoments(features={self.features}, samples={count}, classes={self.classes})"
