"""The tracker's parameters, each declared once: its default, its check and its documentation, side by side.

:class:`TrackerConfig` is that declaration: one dataclass field per argument
of :class:`~delve.SaturationTracker`, in the order of delve 0.1.x's
signature, each made with :func:`~delve.tracking.options.option`. Everything
else is derived from the fields (:mod:`delve.tracking.options`): the
tracker's signature (its ``__signature__``), the *Parameters* section of its
docstring, the validation in :meth:`TrackerConfig.from_arguments`, and the
callbacks' checks in :mod:`delve.integrations`. The config is frozen and
checked in full before the tracker touches the model, so a bad argument raises
a :class:`ValueError` naming the accepted values before any hook exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import torch

from .._compat.spellings import split_positional_writer_args
from ..capture.observation import CONV_METHODS, TIMESERIES_METHODS, ObservationConfig
from ..common import ranks
from ..common.validation import (
    check_choice,
    check_device,
    check_fraction,
    check_int,
    check_number,
    check_optional_int,
    check_positive,
)
from ..engine.precision import PRECISIONS
from ..statistics.registry import resolve_stats
from ..writers.registry import check_save_to
from .options import bind, build, option, parameters_section, signature_of

__all__ = ["TrackerConfig"]

def _as_str(name: str, value: Any) -> str:
    return str(value)


def _as_bool(name: str, value: Any) -> bool:
    return bool(value)


def _writer_args(name: str, value: Any) -> dict[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict of keyword arguments, got {type(value).__name__}")
    return dict(value or {})


def _stats(name: str, value: Any) -> tuple[str, ...]:
    return tuple(resolve_stats(value))


def _save_to(name: str, value: Any) -> tuple[Any, ...]:
    return tuple(check_save_to(value))


def _interpolation(name: str, value: Any) -> str | None:
    return value  # checked with the other observation settings (ObservationConfig)


def _overhead(name: str, value: Any) -> float | None:
    if value is None:
        return None
    value = check_positive(name, value)
    if value > 1:
        raise ValueError(
            f"{name} is a fraction of the training work (0.05 means 5 %), at most 1; got {value:g}: "
            f"did you mean {name}={value / 100:g}?"
        )
    return value


@dataclass(frozen=True)
class TrackerConfig:
    """The tracker's arguments, validated: one field per parameter of :class:`~delve.SaturationTracker`.

    Build it with :meth:`from_arguments`, which takes the tracker's own
    arguments (0.1.x spellings included).

    Examples
    --------
    >>> config = TrackerConfig.from_arguments("runs/a", stats=["lsat_eval", "idim"], conv_method="mean")
    >>> config.stats, config.observation.conv_method
    (('lsat', 'idim'), 'mean')
    """

    savefile: str = option(
        "delve", "Path prefix of everything written, e.g. ``\"runs/vgg\"`` gives ``runs/vgg.csv``.", _as_str, "str"
    )
    save_to: tuple[Any, ...] = option(
        "csv", "Writer keys (``\"csv\"``, ...) and/or writer instances.", _save_to, "str, AbstractWriter or list"
    )
    modules: Any = option(
        None,
        "What to track. A model is searched recursively for every layer kind with a registered observer "
        "(see :func:`~delve.register_observer`).",
        shown="nn.Module, list of nn.Module or dict of str -> nn.Module",
    )
    layer_filter: Callable[[str], bool] | str | Sequence[str] | None = option(
        None,
        "Keep only matching layers: a predicate on the layer name, or names / globs of submodules "
        "(``\"features.*\"``).",
        shown="callable, str or list of str, optional",
    )
    writer_args: Mapping[str, Any] = option(
        None, "Keyword arguments for writers built from keys.", _writer_args, "dict, optional"
    )
    log_interval: int = option(
        1,
        "Record every ``log_interval``-th forward pass of each layer and mode.",
        partial(check_int, minimum=1),
        "int",
    )
    max_samples: int | None = option(
        None,
        "Stop recording a layer and mode after this many observation rows per epoch.",
        partial(check_optional_int, minimum=1),
        "int, optional",
    )
    stats: tuple[str, ...] = option(
        ("lsat",),
        "Statistics, by key or logged name (``lsat`` or ``saturation``; the keys of "
        ":mod:`delve.statistics` and user statistics once registered); 0.1.x spellings such as "
        "``lsat_eval`` are accepted.",
        _stats,
        "list of str",
    )
    layerwise_sat: bool = option(
        True,
        "Log per-layer values of averaged statistics (saturation); ``False`` with ``average_sat=True`` logs "
        "only their average.",
        _as_bool,
        "bool",
    )
    reset_covariance: bool = option(
        True,
        "Start every epoch from empty accumulators (default). ``False`` keeps accumulating over the whole run.",
        _as_bool,
        "bool",
    )
    average_sat: bool = option(
        False,
        "Also log ``<mode>-average-<name>`` of every averaged statistic (``train-average-saturation``), the "
        "mean over layers.",
        _as_bool,
        "bool",
    )
    ignore_layer_names: str | Sequence[str] = option(
        (), "Names or globs of layers to leave out.", shown="str or list of str"
    )
    include_conv: bool = option(True, "``False`` leaves convolutions out.", _as_bool, "bool")
    conv_method: str = option(
        "channelwise",
        "``channelwise`` (every position is a sample), ``mean``, ``max``, ``median`` (pooled over space) or "
        "``flatten``.",
        partial(check_choice, accepted=CONV_METHODS),
        "str",
    )
    timeseries_method: str = option(
        "last_timestep",
        "``last_timestep`` or ``timestepwise`` for RNN/LSTM/GRU outputs.",
        partial(check_choice, accepted=TIMESERIES_METHODS),
        "str",
    )
    sat_threshold: float = option(
        0.99, "Fraction of variance, in (0, 1], that the intrinsic dimensionality explains.", check_fraction, "float"
    )
    nosave: bool = option(
        False, "Write nothing at all; :meth:`add_saturations` still returns values.", _as_bool, "bool"
    )
    verbose: bool = option(
        False,
        "Log progress to the ``delve`` logger at INFO level (and attach a console handler if it has none).",
        _as_bool,
        "bool",
    )
    device: torch.device | None = option(
        None,
        "Where accumulators live. ``None`` keeps them on each layer's output device, so nothing is copied.",
        check_device,
        "str or torch.device, optional",
    )
    initial_epoch: int = option(
        0,
        "Epoch of the first :meth:`add_saturations`; writers resume from it.",
        partial(check_int, minimum=0),
        "int",
    )
    interpolation_strategy: str | None = option(
        None,
        "Shrink feature maps larger than ``interpolation_downsampling`` with this interpolation mode before "
        "recording.",
        _interpolation,
        "str, optional",
    )
    interpolation_downsampling: int = option(
        32,
        "Largest spatial side kept when ``interpolation_strategy`` is set.",
        partial(check_int, minimum=1),
        "int",
    )
    precision: str = option(
        "auto",
        "Precision of each batch's Gram product; the running state is always float64. ``\"auto\"`` "
        "(default): float64 where it is fast (CPUs and the GPUs of :mod:`delve.engine.precision`), float32 "
        "elsewhere; the choice is said once. With ``max_overhead``, ``\"auto\"`` means float32 everywhere: the "
        "sampling error of a subset of rows dwarfs float32's, and cheaper products buy more rows within the "
        "budget. ``\"float32\"`` is faster where float64 is slow, at a relative error below 1e-6 "
        "(docs/performance.rst); ``\"tf32\"`` also lets CUDA (Ampere and later) use TensorFloat-32 products, "
        "with a larger error (same page). On a CPU, products of fewer than ``d / 8`` rows are float64 anyway: "
        "there they cost less. A layer on Apple's MPS (no float64) keeps its state on the CPU, with a one-time "
        "notice.",
        partial(check_choice, accepted=PRECISIONS),
        "{\"auto\", \"float64\", \"float32\", \"tf32\"}",
    )
    embed_size: int = option(
        500,
        "Rows kept per layer and mode by accumulators that keep a sample of rows (the ``embed`` statistic).",
        partial(check_int, minimum=1),
        "int",
    )
    write_rank: int | None = option(
        0,
        "Under ``torch.distributed``, the rank whose writers write (default 0); the other ranks build no "
        "writer and create no file. ``None`` lets every rank write (give each its own ``savefile``). Every "
        "rank returns the same values from :meth:`add_saturations`.",
        partial(check_optional_int, minimum=0),
        "int or None",
    )
    process_group: Any = option(
        None, "The group whose ranks are merged; the default group when ``None``.", shown="ProcessGroup, optional"
    )
    sync_ranks: bool = option(
        True,
        "Merge the accumulators of all ranks at :meth:`add_saturations` (default). ``False`` keeps every "
        "rank's statistics to itself, for ranks that train different models.",
        _as_bool,
        "bool",
    )
    max_positions: int | None = option(
        None,
        "With ``conv_method=\"channelwise\"``, record at most about this many spatial positions per feature "
        "map and batch: every ``k``-th position from a random start (a view, no copy). Cuts the cost of large "
        "maps roughly by ``k``; neighbouring positions are strongly correlated, so the statistics barely move "
        "(measured in ``docs/performance.rst``). ``None`` (default) records every position.",
        partial(check_optional_int, minimum=1),
        "int or None",
    )
    max_overhead: float | None = option(
        None,
        "A cost budget, as a fraction of the tracked layers' training work (``0.05``: 5 %): each layer "
        "records a random subset of its rows (samples, tokens, positions) per batch, sized so that the "
        "estimated tracking work stays within it, spread so that layers get similar rows per feature. "
        "``None`` (default) records every row. The rows merged are logged as ``<mode>-rows_<layer>``; see "
        ":meth:`cost` and the performance docs.",
        _overhead,
        "float or None",
    )
    probe_ridge: float = option(
        1e-3,
        "With ``stats=[..., \"probe\"]``: the ridge of the live linear probes, relative to the features' "
        "variance (``lambda = probe_ridge * trace(Sxx) / d``, :mod:`delve.statistics.probes`); ``0`` fits "
        "plain least squares.",
        partial(check_number, minimum=0),
        "float",
    )
    append: bool = option(
        False,
        "Continue the run already written under ``savefile``: its rows are kept and this tracker's epochs follow "
        "the last one written there. Without it a tracker refuses, before writing its first value, to write "
        "over an earlier run's CSV, unless ``initial_epoch`` or :meth:`load_state_dict` resumes that run. Two "
        "open trackers never write under the same ``savefile``.",
        _as_bool,
        "bool",
    )

    # ------------------------------------------------------------- building
    @classmethod
    def signature(cls) -> inspect.Signature:
        """The tracker's signature: every parameter, positional or keyword, with its default.

        Examples
        --------
        >>> list(TrackerConfig.signature().parameters)[:5]
        ['savefile', 'save_to', 'modules', 'layer_filter', 'writer_args']
        """
        return signature_of(cls, required=("savefile",))

    @classmethod
    def parameters_doc(cls) -> str:
        """The *Parameters* section of the tracker's docstring."""
        return parameters_section(cls)

    @classmethod
    def from_arguments(cls, *args: Any, **kwargs: Any) -> TrackerConfig:
        """Check the tracker's arguments: ``ValueError`` naming the accepted values, ``TypeError`` for unknown ones."""
        arguments = bind(cls.signature(), args, kwargs)
        arguments["layer_filter"], arguments["writer_args"] = split_positional_writer_args(
            arguments["layer_filter"], arguments["writer_args"]
        )
        config = build(cls, arguments)
        config._check_together()
        return config

    def _check_together(self) -> None:
        """The checks that involve several arguments (they raise before anything is built)."""
        _ = self.observation  # the observation settings, checked as one
        if self.write_rank is not None and self.sync_ranks:
            world_size = ranks.get_world_size(self.process_group)
            if self.write_rank >= world_size:
                raise ValueError(
                    f"write_rank must be None (every rank writes) or a rank in 0..{world_size - 1}, "
                    f"got {self.write_rank!r}"
                )

    # ------------------------------------------------------------- derived
    @cached_property
    def observation(self) -> ObservationConfig:
        """How outputs become rows, with the tracker's own random stream for ``max_positions``."""
        return ObservationConfig(
            conv_method=self.conv_method,
            timeseries_method=self.timeseries_method,
            interpolation_strategy=self.interpolation_strategy,
            interpolation_downsampling=self.interpolation_downsampling,
            max_positions=self.max_positions,
            # Independent of the user's stream, and saved with the tracker's state.
            generator=torch.Generator().manual_seed(0) if self.max_positions is not None else None,
        )
