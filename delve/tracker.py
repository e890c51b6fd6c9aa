"""SaturationTracker: hook layers, accumulate their covariance, log statistics per epoch."""

from __future__ import annotations

import logging
import numbers
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed
from .covariance import TorchCovarianceMatrix
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
_STATE_FORMAT = 1  # bump when state_dict's layout changes
DEFAULT_EMBED_SIZE = 500


class _ForwardHook:
    """The callable registered on a user's module.

    It holds the tracker's per-layer recorder. A copy of the model (pickle,
    ``copy.deepcopy``) gets an inert hook instead, so copies are never tracked
    and copying never drags the tracker (locks, writers) along.

    Three situations need care before a forward pass is recorded:

    * ``torch.compile``: the recording is Python with locks and data-dependent
      branches, which Dynamo would trace into a graph with many breaks (or
      fail on). It runs outside the compiler instead: one graph break per
      tracked layer, the same statistics as eager.
    * Activation checkpointing (``torch.utils.checkpoint``) runs the forward
      again inside backward to rebuild activations; that recomputation is
      skipped, so every batch is counted once.
    * ``torch.inference_mode``: accumulators created there would be inference
      tensors that training could never update in place again.
    """

    __slots__ = ("recorder", "tracker")

    def __init__(self, tracker: SaturationTracker, recorder: LayerRecorder) -> None:
        # A weak reference: a tracker the user drops is collected and its
        # __del__ removes the hooks, instead of the model keeping it alive.
        self.tracker = weakref.ref(tracker)
        self.recorder = recorder

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            _record_outside_compiler(self, module, output)
        else:
            self.record(module, output)

    def record(self, module: nn.Module, output: Any) -> None:
        tracker = self.tracker()
        if tracker is None or not tracker._recording or _in_backward():
            return
        recorder = self.recorder
        mode = "train" if module.training else "eval"
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                recorded = recorder.record(module, output, mode)
        else:
            recorded = recorder.record(module, output, mode)
        if recorded and recorder.name not in tracker._forward_order:
            tracker._note_first_forward(recorder.name)

    def __reduce__(self) -> tuple:
        return (_inert_hook, ())


# torch._disable_dynamo defers importing Dynamo (seconds) until a compiled model
# first reaches a hook; torch.compiler.disable imports it at once.
_record_outside_compiler = getattr(torch, "_disable_dynamo", torch.compiler.disable)(_ForwardHook.record)


def _in_backward() -> bool:
    """Whether autograd is running a backward pass in this thread.

    A forward pass inside backward is activation checkpointing rebuilding
    what it dropped: the batch was recorded when it first went forward.
    """
    return _current_graph_task_id() != -1


def _no_graph_task() -> int:
    return -1


_current_graph_task_id = getattr(torch._C, "_current_graph_task_id", _no_graph_task)


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
        ``dtrc``, ``embed``, ``erank``, ``pr``, ``alpha``, ``dorm`` (see
        :mod:`delve.statistics`; 0.1.x spellings such as ``lsat_eval``
        accepted).
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
        float64. ``"float32"`` is faster, at a relative error below 1e-6
        (6.4e-7 at worst in docs/performance.rst); on a CPU, batches of fewer
        than ``d / 8`` rows still use float64 products, which cost less there.
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
    max_positions : int or None
        With ``conv_method="channelwise"``, record at most about this many
        spatial positions per feature map and batch: every ``k``-th position
        from a random start (a view, no copy). Cuts the cost of large maps
        roughly by ``k``; neighbouring positions are strongly correlated, so
        the statistics barely move (measured in ``docs/performance.rst``).
        ``None`` (default) records every position.

    Notes
    -----
    *Non-finite outputs.* A recorded batch that holds a NaN or an Inf is left
    out whole: its finite rows are not merged either, because a layer that
    produced NaN for some samples is already misbehaving and keeping the rest
    would bias the statistics towards the samples that survived. The
    statistics therefore stay finite. The number of rejected batches is
    logged as ``<mode>-nonfinite-batches_<layer>`` and reported once per layer,
    mode and epoch with :func:`warnings.warn` (a ``RuntimeWarning``).

    *Threads.* Hooks may run in several threads at once (``nn.DataParallel``
    replicas, user threads); each layer's accumulators are guarded by a lock,
    so no update is lost.

    *Activation checkpointing.* ``torch.utils.checkpoint`` runs a segment's
    forward again during backward; that recomputation is not recorded (it is
    recognised by autograd running a backward pass in the thread), so every
    batch counts once, with ``use_reentrant`` either way. A forward pass that
    user code starts from inside a backward hook is ignored for the same
    reason.

    *torch.compile.* A model compiled after the tracker is attached feeds it:
    the hooks run outside the compiled graph (one graph break per tracked
    layer) and give the same statistics as eager mode. Dynamo does not notice
    hooks added to a model it has already compiled and run; when ``modules``
    is the compiled model itself, the tracker calls
    :func:`torch.compiler.reset` for you. If you pass the original module of a
    model that was compiled and has already run, call
    ``torch.compiler.reset()`` yourself after creating the tracker.

    *Mixed precision.* float16 and bfloat16 outputs (``torch.autocast``) are
    upcast before any product (to float64, or float32 with
    ``precision="float32"``), so large half-precision values do not overflow.

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
        write_rank: int | None = 0,
        process_group: Any = None,
        sync_ranks: bool = True,
        max_positions: int | None = None,
    ) -> None:
        if isinstance(layer_filter, Mapping) and writer_args is None:
            # delve 0.1.x took writer_args as the fourth positional argument.
            layer_filter, writer_args = None, layer_filter
        if modules is None:
            raise ValueError("modules is required: a model, a list of modules or a dict of name -> module")
        _check_int("log_interval", log_interval, minimum=1)
        if max_samples is not None:
            _check_int("max_samples", max_samples, minimum=1)
            max_samples = int(max_samples)
        _check_int("initial_epoch", initial_epoch, minimum=0)
        _check_int("embed_size", embed_size, minimum=1)
        if write_rank is not None:
            _check_int("write_rank", write_rank, minimum=0)
            world_size = distributed.get_world_size(process_group) if sync_ranks else 1
            if sync_ranks and write_rank >= world_size:
                raise ValueError(
                    f"write_rank must be None (every rank writes) or a rank in 0..{world_size - 1}, "
                    f"got {write_rank!r}"
                )
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
            max_positions=max_positions,
            # The tracker's own stream: independent of the user's, saved with the state.
            generator=torch.Generator().manual_seed(0) if max_positions is not None else None,
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
        self.process_group = process_group
        self.sync_ranks = bool(sync_ranks)
        self.write_rank = None if write_rank is None else int(write_rank)
        self.rank = distributed.get_rank(process_group)
        # Ranks other than write_rank build no writer at all, so they create no files.
        self.is_writer = self.write_rank is None or self.rank == self.write_rank
        if self.verbose:
            _enable_console_logging()

        self.settings = RecordingSettings(
            observation=self.observation,
            log_interval=self.log_interval,
            max_samples=max_samples,
            device=device,
            precision=precision,
            sample_size=int(embed_size) if "embed" in self.stats else None,
            extra_accumulators=tuple(
                (key, STATISTICS[key].accumulator)  # type: ignore[misc]
                for key in self.stats
                if STATISTICS[key].accumulator is not None
            ),
        )
        self._recorders = {layer.name: LayerRecorder(layer.name, self.settings) for layer in self.layers}
        self._layer_modules = {layer.name: layer.module for layer in self.layers}
        self._forward_order: dict[str, None] = {}
        self._order_lock = threading.Lock()
        self._recording = True
        self._closed = False
        self._warned: set[tuple[int, str, str]] = set()
        self._written = False
        self._writers_resumed_at: int | None = None

        if self.nosave or not self.is_writer:
            self.writer = CompositeWriter([], self.savefile)
        else:
            self.writer = build_writer(save_to_entries, self.savefile, writer_args)
        if self.initial_epoch > 0:
            self.writer.resume_from_saved_state(self.initial_epoch)
            self._writers_resumed_at = self.initial_epoch

        self._handles = [
            layer.module.register_forward_hook(_ForwardHook(self, self._recorders[layer.name]))
            for layer in self.layers
        ]
        if _holds_compiled_wrapper(modules):
            # Dynamo does not guard on module hooks: code it compiled before
            # these hooks existed would run without ever calling them.
            logger.info("delve: resetting torch.compile caches so the compiled model calls the new hooks")
            torch.compiler.reset()
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
    def _take(self, reset: bool) -> dict[str, dict[str, Any]]:
        """Every layer's per-mode state, each layer's taken in one step (see :meth:`LayerRecorder.take`)."""
        return {name: recorder.take(reset) for name, recorder in self._recorders.items()}

    def _gather(
        self, taken: Mapping[str, Mapping[str, Any]]
    ) -> dict[tuple[str, str], tuple[TorchCovarianceMatrix | None, Any, dict[str, Any]]]:
        """Every layer's and mode's accumulators, merged across ranks when distributed.

        The slots are the layer list times the modes, the same on every rank
        whatever each rank saw, so every rank joins the same collectives.
        """
        slots = [(name, mode) for name in self._recorders for mode in MODES]
        states = [taken[name].get(mode) for name, mode in slots]
        local = [state.covariance if state is not None else None for state in states]
        if not (self.sync_ranks and distributed.is_distributed(self.process_group)):
            return {
                slot: (accumulator, state, state.extras if state is not None else {})
                for slot, accumulator, state in zip(slots, local, states)
            }
        devices = [self.device or _module_device(self._layer_modules[name]) for name, _ in slots]
        merged = distributed.merge_across_ranks(local, self.process_group, devices)
        gathered = {}
        for slot, accumulator, state in zip(slots, merged, states):
            extras: dict[str, Any] = {}
            # Decided from the merged (global) count, so every rank takes part.
            if accumulator is not None and accumulator.count > 0 and self.settings.extra_accumulators:
                keys = [key for key, _ in self.settings.extra_accumulators]
                local_extras = [
                    state.extras[key] if state is not None else factory()
                    for key, factory in self.settings.extra_accumulators
                ]
                reduced = distributed.merge_extras_across_ranks(
                    local_extras, accumulator.num_features, self.process_group  # type: ignore[arg-type]
                )
                extras = dict(zip(keys, reduced))
            gathered[slot] = (accumulator, state, extras)
        return gathered

    def compute_saturations(self) -> dict[str, Any]:
        """The statistics of everything recorded since the last reset, without logging.

        Under ``torch.distributed`` (see :mod:`delve.distributed`) every rank
        must call this, or :meth:`add_saturations`, at the same point: the
        accumulators of all ranks are merged first and every rank returns the
        same values.

        Returns
        -------
        dict
            ``{"<mode>-<statistic>_<layer>": value}`` in forward order; scalar
            statistics are floats or ints, ``cov`` and ``embed`` numpy arrays.
        """
        return self._compute(self._take(reset=False))

    def _compute(self, taken: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The statistics of states taken by :meth:`_take` (no hook can change them any more)."""
        gathered = self._gather(taken)
        entries = []
        rejections = []
        for name in self.layer_names:
            for mode in MODES:
                accumulator, state, extras = gathered[(name, mode)]
                if accumulator is None:
                    continue
                count = accumulator.count
                rejected = accumulator.rejected_batches
                if count > 0:
                    entries.append((name, mode, state, extras, count, accumulator.fix(), accumulator.mean.clone()))
                if rejected:
                    rejections.append((name, mode, rejected))

        needs_vectors = any(STATISTICS[key].needs_vectors for key in self.stats)
        decompositions = spectra([entry[5] for entry in entries], vectors=needs_vectors)

        values: dict[str, Any] = {}
        saturations: dict[str, list[float]] = {mode: [] for mode in MODES}
        for (name, mode, state, extras, count, covariance, mean), spectrum in zip(entries, decompositions):
            sample = state.sample.rows if state is not None and state.sample is not None else None
            summary = LayerSummary(
                covariance=covariance,
                spectrum=spectrum,
                mean=mean,
                threshold=self.sat_threshold,
                count=count,
                sample=sample,
                extras=extras,
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
        for name, mode, rejected in rejections:
            values[value_name(mode, "nonfinite-batches", name)] = rejected
            self._warn_nonfinite(name, mode, rejected)
        return values

    def _warn_nonfinite(self, name: str, mode: str, rejected: int) -> None:
        """Warn once per layer, mode and epoch; with merged ranks, on the writing rank only."""
        key = (self.epoch, name, mode)
        if key in self._warned or not (self.is_writer or not self.sync_ranks):
            return
        self._warned = {entry for entry in self._warned if entry[0] == self.epoch}
        self._warned.add(key)
        warnings.warn(
            f"delve: layer {name!r} ({mode}) produced {rejected} batch(es) with NaN or Inf "
            f"outputs in epoch {self.epoch}; they were left out of its statistics",
            RuntimeWarning,
            stacklevel=4,
        )

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
        taken = self._take(reset=self.reset_covariance)
        try:
            values = self._compute(taken)
        except BaseException:
            if self.reset_covariance:
                # Nothing is lost when a statistic fails: the epoch's rows go back.
                for name, states in taken.items():
                    self._recorders[name].give_back(states)
            raise
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
            self._written = self._written or bool(values)
            self.epoch += 1
            if not self.reset_covariance:
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
                    # max_samples is a per-epoch budget, also when the covariance keeps accumulating.
                    state.forward_calls = 0
                    state.rows_offered = 0

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
        """Everything needed to continue this tracker exactly where it stands.

        The state holds, per layer and mode, the running count, mean and
        co-moment (float64 tensors), the rejected-batch count, the reservoir
        sample of ``embed`` with its generator, the forward-call and row
        counters, plus the epoch and the layers' forward order. It is made of
        tensors, ints, strings, lists and dicts only, so it is saved with
        ``torch.save`` and loaded with ``torch.load(path, weights_only=True)``.

        Under ``torch.distributed`` each rank's state holds that rank's rows
        only; see the checkpoint documentation for saving per rank.

        Returns
        -------
        dict
            A fresh copy; later recording does not change it.

        Examples
        --------
        >>> import io, torch
        >>> from torch import nn
        >>> model = nn.Linear(4, 3)
        >>> tracker = SaturationTracker("run", modules=model, nosave=True)
        >>> _ = model(torch.randn(10, 4))
        >>> buffer = io.BytesIO()
        >>> torch.save(tracker.state_dict(), buffer)
        >>> _ = buffer.seek(0)
        >>> state = torch.load(buffer, weights_only=True)
        >>> state["layers"]["linear"]["train"]["covariance"]["comoment"].dtype
        torch.float64
        >>> tracker.close()
        """
        state = {
            "format": _STATE_FORMAT,
            "epoch": self.epoch,
            "forward_order": list(self._forward_order),
            "layers": {name: recorder.state_dict() for name, recorder in self._recorders.items()},
        }
        if self.observation.generator is not None:
            state["positions_generator"] = self.observation.generator.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, mid-epoch or between epochs.

        Layer names must match this tracker's. Accumulators go to each layer's
        device (or ``device=``) whatever ``map_location`` the state was loaded
        with. When a fresh tracker loads a state from a later epoch and was
        not built with that ``initial_epoch``, its writers resume from the
        state's epoch, so the rows already on disk are kept rather than
        overwritten.

        Raises
        ------
        ValueError
            If the state is not a tracker state, or holds layers this tracker
            does not track.
        """
        if not isinstance(state, Mapping) or not {"epoch", "layers", "forward_order"} <= set(state):
            raise ValueError("not a SaturationTracker state: expected the keys 'epoch', 'layers', 'forward_order'")
        if int(state.get("format", _STATE_FORMAT)) > _STATE_FORMAT:
            raise ValueError(
                f"the state has format {state['format']}, newer than this delve's {_STATE_FORMAT}; upgrade delve"
            )
        unknown = set(state["layers"]) - set(self._recorders)
        if unknown:
            raise ValueError(
                f"state holds layers this tracker does not track: {sorted(unknown)}; "
                f"tracked: {sorted(self._recorders)}"
            )
        epoch = int(state["epoch"])
        if not self._written and epoch > 0 and self._writers_resumed_at != epoch:
            self.writer.resume_from_saved_state(epoch)
            self._writers_resumed_at = epoch
        self.epoch = epoch
        with self._order_lock:
            self._forward_order = dict.fromkeys(n for n in state["forward_order"] if n in self._recorders)
        for name, recorder_state in state["layers"].items():
            device = self.device or _module_device(self._layer_modules[name])
            self._recorders[name].load_state_dict(_floating_to(recorder_state, device))
        if self.observation.generator is not None and "positions_generator" in state:
            self.observation.generator.set_state(state["positions_generator"])

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
    # numbers.Integral admits numpy integers, which argparse/config code often yields.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")


def _floating_to(state: Any, device: torch.device) -> Any:
    """``state`` with its floating tensors on ``device``; others (counters, RNG states) stay."""
    if isinstance(state, torch.Tensor):
        return state.to(device) if state.is_floating_point() else state
    if isinstance(state, Mapping):
        return {key: _floating_to(value, device) for key, value in state.items()}
    return state


def _holds_compiled_wrapper(modules: Any) -> bool:
    """Whether ``modules`` is, or lists, a ``torch.compile`` wrapper of a model."""
    if isinstance(modules, nn.Module):
        candidates: list[Any] = [modules]
        if isinstance(modules, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            candidates.append(modules.module)
    elif isinstance(modules, Mapping):
        candidates = list(modules.values())
    else:
        candidates = list(modules)
    return any(isinstance(getattr(c, "_orig_mod", None), nn.Module) for c in candidates)


def _module_device(module: nn.Module) -> torch.device:
    """Where a layer computes: its first parameter's or buffer's device, else the CPU."""
    for tensor in module.parameters(recurse=True):
        return tensor.device
    for tensor in module.buffers(recurse=True):
        return tensor.device
    return torch.device("cpu")


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
