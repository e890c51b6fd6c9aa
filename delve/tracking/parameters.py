"""Everything a :class:`~delve.SaturationTracker` is told at construction, validated once.

:class:`TrackerConfig` is frozen: it is checked in full before the tracker
touches the model, so a bad argument raises a :class:`ValueError` naming the
accepted values before any hook exists, and nothing changes it afterwards.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..common import ranks
from ..budget.allocation import CostModel
from .._compat.spellings import split_positional_writer_args
from ..capture.observation import ObservationConfig
from ..engine.precision import PRECISIONS
from ..engine.recorder import RecordingSettings
from ..engine.sample import RowSampler
from ..statistics.registry import STATISTICS, resolve_stats
from ..common.validation import check_choice, check_device, check_fraction, check_int, check_optional_int, check_positive
from ..writers.registry import check_save_to

__all__ = ["TrackerConfig", "DEFAULT_EMBED_SIZE", "PARAMETERS_DOC"]

DEFAULT_EMBED_SIZE = 500

#: The tracker's arguments, documented once beside their validation; part of
#: :class:`~delve.SaturationTracker`'s docstring.
PARAMETERS_DOC = """
Parameters
----------
savefile : str
    Path prefix of everything written, e.g. ``"runs/vgg"`` gives
    ``runs/vgg.csv``.
save_to : str, AbstractWriter or list of them
    Writer keys (``"csv"``, ...) and/or writer instances.
modules : nn.Module, list of nn.Module or dict of str -> nn.Module
    What to track. A model is searched recursively for Linear, Conv1d/2d/3d,
    ConvTranspose1d/2d/3d, RNN, LSTM, GRU and MultiheadAttention layers.
layer_filter : callable, str or list of str, optional
    Keep only matching layers: a predicate on the layer name, or names /
    globs of submodules (``"features.*"``).
writer_args : dict, optional
    Keyword arguments for writers built from keys.
log_interval : int
    Record every ``log_interval``-th forward pass of each layer and mode.
max_samples : int, optional
    Stop recording a layer and mode after this many observation rows per
    epoch.
stats : list of str
    Statistic keys of :mod:`delve.statistics.registry` (``lsat``, ``idim`` and the
    others listed there; user statistics once registered); 0.1.x spellings
    such as ``lsat_eval`` are accepted.
layerwise_sat : bool
    Log per-layer values of averaged statistics (saturation); ``False`` with
    ``average_sat=True`` logs only their average.
reset_covariance : bool
    Start every epoch from empty accumulators (default). ``False`` keeps
    accumulating over the whole run.
average_sat : bool
    Also log ``<mode>-average-<name>`` of every averaged statistic
    (``train-average-saturation``), the mean over layers.
ignore_layer_names : str or list of str
    Names or globs of layers to leave out.
include_conv : bool
    ``False`` leaves convolutions out.
conv_method : str
    ``channelwise`` (every position is a sample), ``mean``, ``max``,
    ``median`` (pooled over space) or ``flatten``.
timeseries_method : str
    ``last_timestep`` or ``timestepwise`` for RNN/LSTM/GRU outputs.
sat_threshold : float
    Fraction of variance, in (0, 1], that the intrinsic dimensionality
    explains.
nosave : bool
    Write nothing at all; :meth:`add_saturations` still returns values.
verbose : bool
    Log progress to the ``delve`` logger at INFO level (and attach a
    console handler if it has none).
device : str or torch.device, optional
    Where accumulators live. ``None`` keeps them on each layer's output
    device, so nothing is copied.
initial_epoch : int
    Epoch of the first :meth:`add_saturations`; writers resume from it.
interpolation_strategy : str, optional
    Shrink feature maps larger than ``interpolation_downsampling`` with
    this interpolation mode before recording.
interpolation_downsampling : int
    Largest spatial side kept when ``interpolation_strategy`` is set.
precision : {"auto", "float64", "float32", "tf32"}
    Precision of each batch's Gram product; the running state is always
    float64. ``"auto"`` (default): float64 on CPUs and on GPUs with a fast
    float64 path (compute capability 8.0, 9.0, 10.0), float32 elsewhere; the
    choice is said once. With ``max_overhead``, ``"auto"`` means float32
    everywhere: the sampling error of a subset of rows dwarfs float32's, and
    cheaper products buy more rows within the budget. ``"float32"`` is faster where float64 is slow, at a
    relative error below 1e-6 (docs/performance.rst); ``"tf32"`` also lets
    CUDA (Ampere and later) use TensorFloat-32 products, with a larger error
    (same page). On a CPU, products of fewer than ``d / 8`` rows are float64
    anyway: there they cost less. A layer on Apple's MPS (no float64) keeps
    its state on the CPU, with a one-time notice.
embed_size : int
    Rows kept per layer and mode for the ``embed`` statistic.
write_rank : int or None
    Under ``torch.distributed``, the rank whose writers write (default 0);
    the other ranks build no writer and create no file. ``None`` lets
    every rank write (give each its own ``savefile``). Every rank returns
    the same values from :meth:`add_saturations`.
process_group : ProcessGroup, optional
    The group whose ranks are merged; the default group when ``None``.
sync_ranks : bool
    Merge the accumulators of all ranks at :meth:`add_saturations`
    (default). ``False`` keeps every rank's statistics to itself, for
    ranks that train different models.
max_overhead : float or None
    A cost budget: each layer records a random subset of its rows (samples,
    tokens, positions) per batch, sized so that the estimated tracking work
    stays within this share of the tracked layers' training work (``0.05``:
    5 %), spread so that layers get similar rows per feature. ``None``
    (default) records every row. The rows merged are logged as
    ``<mode>-rows_<layer>``; see :meth:`cost` and the performance docs.
max_positions : int or None
    With ``conv_method="channelwise"``, record at most about this many
    spatial positions per feature map and batch: every ``k``-th position
    from a random start (a view, no copy). Cuts the cost of large maps
    roughly by ``k``; neighbouring positions are strongly correlated, so
    the statistics barely move (measured in ``docs/performance.rst``).
    ``None`` (default) records every position.
"""


@dataclass(frozen=True)
class TrackerConfig:
    """The tracker's settings, validated. See :class:`~delve.SaturationTracker` for their meaning.

    Build it with :meth:`from_arguments`, which takes the tracker's own
    keyword arguments (0.1.x spellings included).

    Examples
    --------
    >>> config = TrackerConfig.from_arguments("runs/a", stats=["lsat_eval", "idim"], conv_method="mean")
    >>> config.stats, config.observation.conv_method
    (('lsat', 'idim'), 'mean')
    """

    savefile: str
    save_to: tuple[Any, ...] = ("csv",)
    stats: tuple[str, ...] = ("lsat",)
    writer_args: Mapping[str, Any] = field(default_factory=dict)
    layer_filter: Callable[[str], bool] | str | Sequence[str] | None = None
    ignore_layer_names: str | Sequence[str] = ()
    include_conv: bool = True
    observation: ObservationConfig = field(default_factory=ObservationConfig)
    log_interval: int = 1
    max_samples: int | None = None
    layerwise_sat: bool = True
    reset_covariance: bool = True
    average_sat: bool = False
    sat_threshold: float = 0.99
    nosave: bool = False
    verbose: bool = False
    device: torch.device | None = None
    initial_epoch: int = 0
    precision: str = "auto"
    embed_size: int = DEFAULT_EMBED_SIZE
    write_rank: int | None = 0
    process_group: Any = None
    sync_ranks: bool = True
    max_overhead: float | None = None

    @classmethod
    def from_arguments(
        cls,
        savefile: str,
        save_to: Any = "csv",
        layer_filter: Any = None,
        writer_args: Mapping[str, Any] | None = None,
        log_interval: int = 1,
        max_samples: int | None = None,
        stats: Sequence[str] = ("lsat",),
        layerwise_sat: bool = True,
        reset_covariance: bool = True,
        average_sat: bool = False,
        ignore_layer_names: str | Sequence[str] = (),
        include_conv: bool = True,
        conv_method: str = "channelwise",
        timeseries_method: str = "last_timestep",
        sat_threshold: float = 0.99,
        nosave: bool = False,
        verbose: bool = False,
        device: Any = None,
        initial_epoch: int = 0,
        interpolation_strategy: str | None = None,
        interpolation_downsampling: int = 32,
        precision: str = "auto",
        embed_size: int = DEFAULT_EMBED_SIZE,
        write_rank: int | None = 0,
        process_group: Any = None,
        sync_ranks: bool = True,
        max_positions: int | None = None,
        max_overhead: float | None = None,
    ) -> TrackerConfig:
        """Validate the tracker's arguments; raises ``ValueError`` naming the accepted values."""
        layer_filter, writer_args = split_positional_writer_args(layer_filter, writer_args)
        if writer_args is not None and not isinstance(writer_args, Mapping):
            raise ValueError(f"writer_args must be a dict of keyword arguments, got {type(writer_args).__name__}")
        write_rank = check_optional_int("write_rank", write_rank, minimum=0)
        if write_rank is not None and sync_ranks:
            world_size = ranks.get_world_size(process_group)
            if write_rank >= world_size:
                raise ValueError(
                    f"write_rank must be None (every rank writes) or a rank in 0..{world_size - 1}, "
                    f"got {write_rank!r}"
                )
        observation = ObservationConfig(
            conv_method=conv_method,
            timeseries_method=timeseries_method,
            interpolation_strategy=interpolation_strategy,
            interpolation_downsampling=interpolation_downsampling,
            max_positions=max_positions,
            # The tracker's own stream: independent of the user's, saved with the state.
            generator=torch.Generator().manual_seed(0) if max_positions is not None else None,
        )
        return cls(
            savefile=str(savefile),
            save_to=tuple(check_save_to(save_to)),
            stats=tuple(resolve_stats(stats)),
            writer_args=dict(writer_args or {}),
            layer_filter=layer_filter,
            ignore_layer_names=ignore_layer_names,
            include_conv=bool(include_conv),
            observation=observation,
            log_interval=check_int("log_interval", log_interval, minimum=1),
            max_samples=check_optional_int("max_samples", max_samples, minimum=1),
            layerwise_sat=bool(layerwise_sat),
            reset_covariance=bool(reset_covariance),
            average_sat=bool(average_sat),
            sat_threshold=check_fraction("sat_threshold", sat_threshold),
            nosave=bool(nosave),
            verbose=bool(verbose),
            device=check_device("device", device),
            initial_epoch=check_int("initial_epoch", initial_epoch, minimum=0),
            precision=check_choice("precision", precision, PRECISIONS),
            embed_size=check_int("embed_size", embed_size, minimum=1),
            write_rank=write_rank,
            process_group=process_group,
            sync_ranks=bool(sync_ranks),
            max_overhead=None if max_overhead is None else check_positive("max_overhead", max_overhead),
        )

    def recording_settings(self) -> RecordingSettings:
        """What every layer's recorder needs to know (a new cost model and row sampler each call)."""
        rank = ranks.get_rank(self.process_group)
        budgeted = self.max_overhead is not None
        return RecordingSettings(
            observation=self.observation,
            log_interval=self.log_interval,
            max_samples=self.max_samples,
            device=self.device,
            precision=self.product_precision,
            sample_size=self.sample_size,
            extra_accumulators=self.extra_accumulators,
            seed=rank,
            costs=CostModel(self.max_overhead),
            sampler=RowSampler(seed=zlib.crc32(f"rows/{rank}".encode())) if budgeted else None,
        )

    @property
    def product_precision(self) -> str:
        """The precision the layers' products are asked for: ``"auto"`` under a budget is float32.

        Examples
        --------
        >>> TrackerConfig.from_arguments("run", max_overhead=0.05).product_precision
        'float32'
        >>> TrackerConfig.from_arguments("run").product_precision
        'auto'
        """
        if self.max_overhead is not None and self.precision == "auto":
            return "float32"
        return self.precision

    @property
    def extra_accumulators(self) -> tuple[tuple[str, Callable[[], Any]], ...]:
        """``(key, factory)`` of every requested statistic that accumulates more than the covariance."""
        return tuple(
            (key, STATISTICS[key].accumulator)  # type: ignore[misc]
            for key in self.stats
            if STATISTICS[key].accumulator is not None
        )

    @property
    def sample_size(self) -> int | None:
        """Rows of the reservoir sample per layer and mode, when a requested statistic reads one."""
        return self.embed_size if any(STATISTICS[key].needs_sample for key in self.stats) else None
