"""Timing harness: bare and tracked training steps of one model, alternated in one process.

Copies of one model (same initial weights, same batches) train side by side:
``bare`` (no tracker) and one tracked copy per mode. Every round steps each
copy once, in a rotating order, and keeps the per-round ratio
``t_tracked / t_bare``; the median of these ratios is the overhead. A slow
moment on a shared machine hits all steps of a round alike, so the ratio
survives load far better than absolute times do.

Works on CPU and CUDA: the clock passed in decides what a time is (a CUDA
clock synchronises before reading), and ``amp_dtype`` runs every forward pass
under autocast.
"""

from __future__ import annotations

import copy
import inspect
import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from workloads import Workload

from delve import SaturationTracker
from delve.engine.products import feature_blocks as _feature_blocks

__all__ = [
    "STATS", "NOT_SUPPORTED", "Clock", "ModeSpec", "MODE_SPECS", "CPU_MODES", "BASE_MODES", "LayerShape",
    "unsupported_arguments", "make_step", "observation_shapes", "floor_variants",
    "accumulator_bytes", "serialized_bytes", "state_bytes", "alternate", "ratio_stats",
    "time_add_saturations", "measure_overhead",
]

STATS = ["lsat", "idim"]
NOT_SUPPORTED = "n/a (not supported by this delve)"
Clock = Callable[[], float]


@dataclass(frozen=True)
class ModeSpec:
    """A tracked variant: the tracker arguments that define it.

    ``tf32`` lets CUDA matrix products use TF32 during this variant's steps
    (about 1e-3 relative error per product; GPU only).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    tf32: bool = False


MODE_SPECS: dict[str, ModeSpec] = {
    "exact": ModeSpec("exact", {"precision": "float64"}),
    "fast": ModeSpec("fast", {"precision": "float32"}),
    # The tracker picks its own precision and sampling to stay under 5 %.
    "budget": ModeSpec("budget", {"max_overhead": 0.05}),
    "fast-tf32": ModeSpec("fast-tf32", {"precision": "float32"}, tf32=True),
}
CPU_MODES = ("exact", "fast", "budget")
BASE_MODES = ("exact", "fast")


def unsupported_arguments(kwargs: dict[str, Any]) -> list[str]:
    """Tracker arguments this version of delve does not accept (read from its signature)."""
    parameters = inspect.signature(SaturationTracker).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [name for name in kwargs if name not in parameters]


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def make_step(
    model: nn.Module,
    work: Workload,
    batches: list[torch.Tensor],
    targets: list[torch.Tensor],
    amp_dtype: torch.dtype | None = None,
    tf32: bool = False,
) -> Callable[[], None]:
    """One SGD training step per call, cycling through ``batches``."""
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    device = batches[0].device
    state = {"i": 0}

    def step() -> None:
        # Set on every step: variants alternate, and the bare step must never inherit TF32.
        torch.backends.cuda.matmul.allow_tf32 = tf32
        i = state["i"] % len(batches)
        state["i"] += 1
        optimiser.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            loss = work.loss(model(batches[i]), targets[i])
        loss.backward()
        optimiser.step()

    return step


@dataclass(frozen=True)
class LayerShape:
    """One tracked layer: its name, kind and the ``rows x d`` observations of one batch."""

    name: str
    kind: str
    rows: int
    d: int


def observation_shapes(
    model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None = None
) -> list[LayerShape]:
    """Every tracked layer's observation shape for one batch, read from a probe tracker."""
    probe = SaturationTracker("probe", modules=model, nosave=True, stats=STATS)
    with torch.no_grad(), _autocast(x.device, amp_dtype):
        model(x)
    kinds = {layer.name: layer.kind for layer in probe.layers}
    shapes = [
        LayerShape(row.layer, kinds[row.layer], int(row.rows), int(row.features))
        for row in probe.cost().itertuples(index=False)
    ]
    probe.close()
    return shapes


def _products(data: list[torch.Tensor], upper: bool) -> Callable[[], None]:
    """The Gram products ``S S^T`` of feature-major ``(d, n)`` data.

    Feature-major ``S S^T`` ran 10 to 30 % faster than ``A^T A`` on row-major
    ``(n, d)`` data on the benchmark machine, so the floor is the lower one.
    ``upper=True`` computes only the upper block triangle, in the column
    blocks delve uses: the least arithmetic an exact accumulator can do with
    these kernels.
    """
    blocks = [_feature_blocks(s.shape[0]) if upper else [(0, s.shape[0])] for s in data]

    def run() -> None:
        torch.backends.cuda.matmul.allow_tf32 = False
        for s, spans in zip(data, blocks):
            for start, stop in spans:
                torch.mm(s[start:stop], s[start:].t())

    return run


def floor_variants(shapes: list[tuple[int, int]], device: torch.device | None = None) -> dict[str, Callable[[], None]]:
    """``floor64`` (full float64 products), ``upper64`` and ``upper32`` (upper block triangle).

    The two float64 floors share one copy of the data: the ResNet's rows
    alone take over half a gigabyte in float64.
    """
    data64 = [torch.randn(d, n, dtype=torch.float64, device=device) for n, d in shapes]
    data32 = [s.float() for s in data64]
    return {"floor64": _products(data64, False), "upper64": _products(data64, True), "upper32": _products(data32, True)}


def accumulator_bytes(tracker: SaturationTracker) -> list[tuple[str, str, int, int]]:
    """``(layer, mode, bytes held, d)`` for every accumulator of a tracker (its tensors, and a pending block)."""
    out = []
    for name, recorder in tracker._recording.recorders.items():
        for mode, state in recorder.modes.items():
            cov = state.covariance
            parts = (cov, cov.moments, getattr(cov, "_pending", None))
            held = sum(_tensor_bytes(part) for part in parts)
            out.append((name, mode, held, cov.num_features or 0))
    return out


def _tensor_bytes(owner: object) -> int:
    if owner is None:
        return 0
    return sum(v.untyped_storage().nbytes() for v in vars(owner).values() if isinstance(v, torch.Tensor))


def serialized_bytes(obj: object) -> int:
    """Bytes of ``torch.save(obj)``: what a checkpoint of it costs on disk."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def state_bytes(tracker: SaturationTracker) -> tuple[int, dict[str, dict[str, int]]]:
    """Serialized size of the whole tracker state, and of each layer's state per recorded mode."""
    state = tracker.state_dict()
    per_layer = {
        name: {mode: serialized_bytes(saved) for mode, saved in layer.items()}
        for name, layer in state["layers"].items()
    }
    return serialized_bytes(state), per_layer


def alternate(
    variants: dict[str, Callable[[], None]], rounds: int, warmup: int, clock: Clock
) -> dict[str, list[float]]:
    """Time each variant once per round, rotating the order every round."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = clock()
            variants[name]()
            times[name].append(clock() - start)
    return times


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of per-round ratios."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], ratios[len(ratios) // 2], ratios[-1]]
    return statistics.median(ratios), q[0], q[2]


def time_add_saturations(
    tracker: SaturationTracker,
    model: nn.Module,
    batch: torch.Tensor,
    repeats: int,
    clock: Clock,
    amp_dtype: torch.dtype | None = None,
) -> list[float]:
    """Times of ``repeats`` calls of ``add_saturations``.

    The first call closes the epoch the timed rounds recorded; before each
    later one a forward pass refills the accumulators. Its cost depends on
    the layers' widths and the modes recorded, not on how many rows went in.
    """
    times = []
    for index in range(repeats):
        if index:
            with torch.no_grad(), _autocast(batch.device, amp_dtype):
                model(batch)
        start = clock()
        tracker.add_saturations()
        times.append(clock() - start)
    return times


def measure_overhead(
    work: Workload,
    rounds: int,
    warmup: int,
    clock: Clock,
    modes: tuple[str, ...] = BASE_MODES,
    with_floor: bool = True,
    saturation_repeats: int = 0,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    **tracker_kwargs: object,
) -> dict[str, Any]:
    """Alternating bare and tracked training steps of one workload.

    Parameters
    ----------
    modes : tuple of str
        Keys of :data:`MODE_SPECS`. A mode whose arguments this delve does
        not accept is reported as unsupported and not run.
    with_floor : bool
        Also time the bare Gram products of the tracked layers' rows.
    saturation_repeats : int
        When positive, also time ``add_saturations`` (median of this many
        calls) and serialise every tracker's state after the rounds.
    tracker_kwargs
        Passed to every tracker, on top of the mode's own arguments.

    Returns
    -------
    dict
        JSON-friendly figures; ``result[mode]["ratio"]`` is ``1 + overhead``.
    """
    device = torch.device(device)
    started = time.perf_counter()
    torch.manual_seed(0)
    base = work.build().to(device)
    generator = torch.Generator().manual_seed(1)
    batches = [work.inputs(generator) for _ in range(4)]
    targets = [work.targets(b, work.classes, generator).to(device) for b in batches]
    batches = [b.to(device) for b in batches]
    layers = observation_shapes(copy.deepcopy(base), batches[0], amp_dtype)
    shapes = [(layer.rows, layer.d) for layer in layers]

    result: dict[str, Any] = {
        "workload": work.title,
        "name": work.name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "weights_bytes": serialized_bytes(base.state_dict()),
        "layers": len(layers),
        "shapes": shapes,
        "layer_shapes": [vars(layer) for layer in layers],
        "modes": list(modes),
    }
    variants: dict[str, Callable[[], None]] = {
        "bare": make_step(copy.deepcopy(base), work, batches, targets, amp_dtype)
    }
    trackers: dict[str, SaturationTracker] = {}
    models: dict[str, nn.Module] = {}
    for mode in modes:
        spec = MODE_SPECS[mode]
        missing = unsupported_arguments(spec.kwargs)
        if missing:
            result[mode] = {"supported": False, "missing": missing}
            continue
        models[mode] = copy.deepcopy(base)
        trackers[mode] = SaturationTracker(
            f"bench-{mode}", modules=models[mode], nosave=True, stats=STATS, **{**tracker_kwargs, **spec.kwargs}
        )
        variants[mode] = make_step(models[mode], work, batches, targets, amp_dtype, tf32=spec.tf32)
    if with_floor:
        variants.update(floor_variants(shapes, device))

    # One step each first, so the memory check below sees allocated accumulators.
    variants["bare"]()
    for mode in trackers:
        variants[mode]()
    memory_early = {mode: sum(entry[2] for entry in accumulator_bytes(t)) for mode, t in trackers.items()}
    alternation_start = time.perf_counter()
    times = alternate(variants, rounds, warmup, clock)
    # Wall time per round, warm-up included: what sizes a model's default rounds.
    result["round_s"] = (time.perf_counter() - alternation_start) / max(1, rounds + warmup)
    result["bare_step_s"] = statistics.median(times["bare"])
    result["rounds"], result["warmup"], result["steps"] = rounds, warmup, rounds + warmup + 1
    for mode, tracker in trackers.items():
        med, q1, q3 = ratio_stats(times[mode], times["bare"])
        late = sum(entry[2] for entry in accumulator_bytes(tracker))
        result[mode] = {
            "supported": True, "ratio": med, "q1": q1, "q3": q3, "memory_constant": memory_early[mode] == late
        }
    if with_floor:
        for kind in ("floor64", "upper64", "upper32"):
            med, q1, q3 = ratio_stats(times[kind], times["bare"])
            result[kind] = {"ratio": med, "q1": q1, "q3": q3}
    if saturation_repeats > 0:
        for mode, tracker in trackers.items():
            # Before add_saturations: it starts the next epoch, which frees the accumulators.
            total, per_layer = state_bytes(tracker)
            timings = time_add_saturations(tracker, models[mode], batches[0], saturation_repeats, clock, amp_dtype)
            result[mode].update(
                state_bytes=total, layer_state_bytes=per_layer,
                add_saturations_s=statistics.median(timings), add_saturations_all_s=timings,
            )
    for tracker in trackers.values():
        tracker.close()
    result["wall_s"] = time.perf_counter() - started
    return result
