"""What a tracker's validated arguments mean for the machinery below it: recorders, budget, statistics.

:class:`~delve.tracking.parameters.TrackerConfig` holds what the user said;
these functions derive what each stage is set up with, once per tracker.
"""

from __future__ import annotations

import zlib
from typing import Any

from ..budget.cost_model import CostModel
from ..budget.row_sampler import RowSampler
from ..common import ranks
from ..engine.layer_state import StateSpec
from ..engine.probe import ProbeMoments
from ..engine.recorder import RecordingSettings
from ..engine.targets import TargetSlot
from ..statistics.registry import STATISTICS
from .parameters import TrackerConfig

__all__ = ["product_precision", "recording_settings", "statistic_options"]


def product_precision(config: TrackerConfig) -> str:
    """The precision the layers' products are asked for: ``"auto"`` under a budget is float32.

    The sampling error of a subset of rows dwarfs float32's, and cheaper
    products buy more rows within the budget.

    Examples
    --------
    >>> product_precision(TrackerConfig.from_arguments("run", max_overhead=0.05))
    'float32'
    >>> product_precision(TrackerConfig.from_arguments("run"))
    'auto'
    """
    if config.max_overhead is not None and config.precision == "auto":
        return "float32"
    return config.precision


def recording_settings(config: TrackerConfig) -> RecordingSettings:
    """What every layer's recorder needs to know (a new cost model, row sampler and target slot each call)."""
    rank = ranks.get_rank(config.process_group)
    states = StateSpec(
        accumulators=tuple(
            (key, STATISTICS[key].accumulator)  # type: ignore[misc]
            for key in config.stats
            if STATISTICS[key].accumulator is not None
        ),
        seed=rank,
        device=config.device,
        precision=product_precision(config),
        sample_size=config.embed_size,
    )
    budgeted = config.max_overhead is not None
    probes = any(STATISTICS[key].accumulator is ProbeMoments for key in config.stats)
    return RecordingSettings(
        observation=config.observation,
        states=states,
        log_interval=config.log_interval,
        max_samples=config.max_samples,
        costs=CostModel(config.max_overhead),
        sampler=RowSampler(seed=zlib.crc32(f"rows/{rank}".encode())) if budgeted else None,
        targets=TargetSlot() if probes else None,
    )


def statistic_options(config: TrackerConfig) -> dict[str, Any]:
    """The settings statistics read (:attr:`~delve.statistics.registry.LayerSummary.options`).

    Examples
    --------
    >>> statistic_options(TrackerConfig.from_arguments("run", probe_ridge=0.1))
    {'probe_ridge': 0.1}
    """
    return {"probe_ridge": config.probe_ridge}
