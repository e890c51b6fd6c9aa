"""SaturationTracker: hook layers, accumulate their covariance, log statistics per epoch."""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .layers import TrackedLayer, discover_layers
from .metrics import spectra
from .naming import MODES, value_name
from .observations import ObservationConfig
from .recording import LayerRecorder, RecordingSettings
from .statistics import STATISTICS, LayerSummary, resolve_stats
from .writers.base import AbstractWriter, CompositeWriter
from .writers.registry import build_writer, check_save_to

__all__ = ["SaturationTracker", "CheckLayerSat"]

logger = logging.getLogger("delve")

PRECISIONS = ("float64", "float32")
DEFAULT_EMBED_SIZE = 500


class _ForwardHook:
    """The callable registered on a user's module.

    It holds the tracker's per-layer recorder. A copy of the model (pickle,
    ``copy.deepcopy``) gets an inert hook instead, so copies are never tracked
    and copying never drags the tracker (locks, writers) along.
    """

    __slots__ = ("recorder", "tracker")

    def __init__(self, tracker: SaturationTracker, recorder: LayerRecorder) -> None:
        # A weak reference: a tracker the user drops is collected and its
        # __del__ removes the hooks, instead of the model keeping it alive.
        self.tracker = weakref.ref(tracker)
        self.recorder = recorder

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        tracker = self.tracker()
        if tracker is None or not tracker._recording:
            return
        recorder = self.recorder
        recorded = recorder.record(module, output, "train" if module.training else "eval")
        if recorded and recorder.name not in tracker._forward_order:
            tracker._note_first_forward(recorder.name)

    def __reduce__(self) -> tuple:
        return (_inert_hook, ())


def _inert_hook(*args: Any) -> Callable[..., None]:
    return _do_nothing


def _do_nothing(*args: Any) -> None:
    return None


class SaturationTracker:
    """Track the feature-space saturation of a network's layers during training.

    Forward hooks feed every tracked layer's output into a float64 running
    covariance, separately for training and evaluation mode (taken from
    ``module.training`` at forward time). :meth:`add_saturations`, called once
    per epoch, turns each covariance into the requested statistics, hands them
    to the writers and starts the next epoch.

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
        Statistic keys: ``lsat``, ``idim``, ``cov``, ``det``, ``trc``,
        ``dtrc``, ``embed`` (0.1.x spellings such as ``lsat_eval`` accepted).
    layerwise_sat : bool
        Log per-layer values; ``False`` with ``average_sat=True`` logs only
        the average saturation.
    reset_covariance : bool
        Start every epoch from empty accumulators (default). ``False`` keeps
        accumulating over the whole run.
    average_sat : bool
        Also log ``<mode>-average-saturation``, the mean over layers.
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
    precision : {"float64", "float32"}
        Precision of each batch's Gram product; the running state is always
        float64. ``"float32"`` is faster at about 1e-7 relative error.
    embed_size : int
        Rows kept per layer and mode for the ``embed`` statistic.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from delve import SaturationTracker
    >>> model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with SaturationTracker("run", modules=model, nosave=True) as tracker:
    ...     _ = model(torch.randn(64, 8))
    ...     values = tracker.add_saturations()
    >>> sorted(values)
    ['train-saturation_0', 'train-saturation_2']
    """

    def __init__(
        self,
        savefile: str,
        save_to: str | AbstractWriter | Sequence[str | AbstractWriter] = "csv",
        modules: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None = None,
        layer_filter: Callable[[str], bool] | str | Sequence[str] | None = None,
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
        device: str | torch.device | None = None,
        initial_epoch: int = 0,
        interpolation_strategy: str | None = None,
        interpolation_downsampling: int = 32,
        precision: str = "float64",
        embed_size: int = DEFAULT_EMBED_SIZE,
    ) -> None:
        if isinstance(layer_filter, Mapping) and writer_args is None:
            # delve 0.1.x took writer_args as the fourth positional argument.
            layer_filter, writer_args = None, layer_filter
        if modules is None:
            raise ValueError("modules is required: a model, a list of modules or a dict of name -> module")
        _check_int("log_interval", log_interval, minimum=1)
        if max_samples is not None:
            _check_int("max_samples", max_samples, minimum=1)
        _check_int("initial_epoch", initial_epoch, minimum=0)
        _check_int("embed_size", embed_size, minimum=1)
        if isinstance(sat_threshold, bool) or not isinstance(sat_threshold, (int, float)) or not (
            0.0 < sat_threshold <= 1.0
        ):
            raise ValueError(f"sat_threshold must lie in (0, 1], got {sat_threshold!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        try:
            device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {device!r} is not a valid torch device: {error}") from error

        self.savefile = str(savefile)
        self.stats = resolve_stats(stats)
        self.observation = ObservationConfig(
            conv_method=conv_method,
            timeseries_method=timeseries_method,
            interpolation_strategy=interpolation_strategy,
            interpolation_downsampling=interpolation_downsampling,
        )
        save_to_entries = check_save_to(save_to)
        self.layers: list[TrackedLayer] = discover_layers(
            modules, layer_filter=layer_filter, ignore_layer_names=ignore_layer_names, include_conv=include_conv
        )

        self.sat_threshold = float(sat_threshold)
        self.layerwise_sat = bool(layerwise_sat)
        self.average_sat = bool(average_sat)
        self.reset_covariance = bool(reset_covariance)
        self.nosave = bool(nosave)
        self.verbose = bool(verbose)
        self.device = device
        self.epoch = int(initial_epoch)
        self.initial_epoch = int(initial_epoch)
        self.log_interval = int(log_interval)
        self.max_samples = max_samples
        self.precision = precision
        if self.verbose:
            _enable_console_logging()

        self.settings = RecordingSettings(
            observation=self.observation,
            log_interval=self.log_interval,
            max_samples=max_samples,
            device=device,
            precision=precision,
            sample_size=embed_size if "embed" in self.stats else None,
            extra_accumulators=tuple(
                (key, STATISTICS[key].accumulator)  # type: ignore[misc]
                for key in self.stats
                if STATISTICS[key].accumulator is not None
            ),
        )
        self._recorders = {layer.name: LayerRecorder(layer.name, self.settings) for layer in self.layers}
        self._forward_order: dict[str, None] = {}
        self._order_lock = threading.Lock()
        self._recording = True
        self._closed = False

        if self.nosave:
            self.writer = CompositeWriter([], self.savefile)
        else:
            self.writer = build_writer(save_to_entries, self.savefile, writer_args)
        if self.initial_epoch > 0:
            self.writer.resume_from_saved_state(self.initial_epoch)

        self._handles = [
            layer.module.register_forward_hook(_ForwardHook(self, self._recorders[layer.name]))
            for layer in self.layers
        ]
        logger.info("delve tracks %d layers: %s", len(self.layers), ", ".join(self._recorders))

    # ------------------------------------------------------------- recording
    def _note_first_forward(self, name: str) -> None:
        with self._order_lock:
            self._forward_order.setdefault(name)

    @property
    def layer_names(self) -> list[str]:
        """Tracked layer names, in order of their first forward pass, then the rest."""
        return list(self._forward_order) + [n for n in self._recorders if n not in self._forward_order]

    def stop(self) -> None:
        """Pause recording; hooks stay in place but ignore forward passes."""
        self._recording = False

    def resume(self) -> None:
        """Resume recording after :meth:`stop`."""
        if self._closed:
            raise RuntimeError("this tracker is closed; create a new one to record again")
        self._recording = True

    def is_recording(self) -> bool:
        """Whether forward passes are currently recorded."""
        return self._recording

    # ----------------------------------------------------------- computation
    def compute_saturations(self) -> dict[str, Any]:
        """The statistics of everything recorded since the last reset, without logging.

        Returns
        -------
        dict
            ``{"<mode>-<statistic>_<layer>": value}`` in forward order; scalar
            statistics are floats or ints, ``cov`` and ``embed`` numpy arrays.
        """
        pending = []
        for name in self.layer_names:
            recorder = self._recorders[name]
            with recorder.lock:
                for mode in MODES:
                    state = recorder.modes.get(mode)
                    if state is not None:
                        pending.append((name, mode, state, state.covariance.count, state.covariance.rejected_batches))

        with_data = [entry for entry in pending if entry[3] > 0]
        covariances = [state.covariance.fix() for _, _, state, _, _ in with_data]
        needs_vectors = any(STATISTICS[key].needs_vectors for key in self.stats)
        decompositions = spectra(covariances, vectors=needs_vectors)

        values: dict[str, Any] = {}
        saturations: dict[str, list[float]] = {mode: [] for mode in MODES}
        for (name, mode, state, count, _), covariance, spectrum in zip(with_data, covariances, decompositions):
            sample = state.sample.rows if state.sample is not None else None
            summary = LayerSummary(
                covariance=covariance,
                spectrum=spectrum,
                mean=state.covariance.mean,
                threshold=self.sat_threshold,
                count=count,
                sample=sample,
                extras=state.extras,
            )
            for key in self.stats:
                statistic = STATISTICS[key]
                value = statistic.compute(summary)
                if key == "lsat":
                    saturations[mode].append(value)
                    if not self.layerwise_sat:
                        continue
                values[value_name(mode, statistic.name, name)] = value
        if self.average_sat:
            for mode, per_layer in saturations.items():
                if per_layer:
                    values[f"{mode}-average-saturation"] = float(np.mean(per_layer))
        for name, mode, _, _, rejected in pending:
            if rejected:
                values[value_name(mode, "nonfinite-batches", name)] = rejected
                warnings.warn(
                    f"delve: layer {name!r} ({mode}) produced {rejected} batch(es) with NaN or Inf "
                    "outputs this epoch; they were left out of its statistics",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return values

    def add_saturations(self, save: bool = True) -> dict[str, Any]:
        """Compute, log and reset: call once per epoch.

        Every requested statistic is computed for every layer and mode that saw
        data since the last reset (layers without data are skipped), handed to
        the writers under the current epoch, and the accumulators are reset
        unless ``reset_covariance=False``.

        Parameters
        ----------
        save : bool
            Also ask the writers to persist the epoch (write files).

        Returns
        -------
        dict
            The values logged, as :meth:`compute_saturations` returns them.
        """
        values = self.compute_saturations()
        epoch = self.epoch
        try:
            for name, value in values.items():
                if isinstance(value, np.ndarray):
                    self.writer.add_array(name, value, epoch)
                else:
                    self.writer.add_scalar(name, value, epoch)
            if save:
                self.writer.save()
        finally:
            self.epoch += 1
            if self.reset_covariance:
                self.reset()
            else:
                self._reset_counters()
        logger.info("delve epoch %d: %d values logged", epoch, len(values))
        return values

    def reset(self) -> None:
        """Empty every accumulator (done by :meth:`add_saturations` by default)."""
        for recorder in self._recorders.values():
            recorder.reset()

    def _reset_counters(self) -> None:
        for recorder in self._recorders.values():
            with recorder.lock:
                for state in recorder.modes.values():
                    state.forward_calls = 0

    # --------------------------------------------------------------- writers
    def add_scalar(self, name: str, value: float, **kwargs: Any) -> None:
        """Log a user scalar (loss, accuracy...) into the current epoch's row."""
        self.writer.add_scalar(name, _to_python(value), self.epoch, **kwargs)

    def add_scalars(self, prefix: str, value_dict: Mapping[str, float], **kwargs: Any) -> None:
        """Log several user scalars named ``prefix + key``."""
        self.writer.add_scalars(prefix, {k: _to_python(v) for k, v in value_dict.items()}, self.epoch, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Other add_* calls (add_image, add_histogram, ...) go to writers that have them.
        if name.startswith("add_") and "writer" in self.__dict__:
            writers = [w for w in self.writer.writers if hasattr(w, name)]
            if writers:
                epoch = self.epoch

                def forward(*args: Any, **kwargs: Any) -> None:
                    kwargs.setdefault("epoch", epoch)
                    for writer in writers:
                        getattr(writer, name)(*args, **kwargs)

                return forward
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def save(self) -> None:
        """Persist what the writers hold."""
        self.writer.save()

    def close(self) -> None:
        """Remove every hook and close the writers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._recording = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.writer.close()

    def __enter__(self) -> SaturationTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A tracker that is garbage-collected must not leave hooks behind.
        for handle in getattr(self, "_handles", ()):
            handle.remove()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Accumulators, counters and the epoch; loads with ``torch.load(weights_only=True)``."""
        return {
            "epoch": self.epoch,
            "forward_order": list(self._forward_order),
            "layers": {name: recorder.state_dict() for name, recorder in self._recorders.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; layer names must match this tracker's."""
        unknown = set(state["layers"]) - set(self._recorders)
        if unknown:
            raise ValueError(f"state holds layers this tracker does not track: {sorted(unknown)}")
        self.epoch = int(state["epoch"])
        with self._order_lock:
            self._forward_order = dict.fromkeys(state["forward_order"])
        for name, recorder_state in state["layers"].items():
            self._recorders[name].load_state_dict(recorder_state)

    def __repr__(self) -> str:
        return (
            f"SaturationTracker(savefile={self.savefile!r}, layers={len(self._recorders)}, "
            f"stats={self.stats}, epoch={self.epoch}, recording={self._recording})"
        )


class CheckLayerSat(SaturationTracker):
    """Deprecated name of :class:`SaturationTracker`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "CheckLayerSat is deprecated; use delve.SaturationTracker (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


def _check_int(argument: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().numpy()
    return value


def _enable_console_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
