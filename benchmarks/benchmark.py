"""Overhead of delve's SaturationTracker on CPU training, measured side by side.

Reproduce everything (about 15 minutes on 2 quiet cores)::

    python benchmarks/benchmark.py --output benchmarks/RESULTS.md

A smoke run (about 2 minutes, fewer rounds, narrower scaling table)::

    python benchmarks/benchmark.py --quick

Method
------
Three copies of one model (same initial weights, same batches) train in one
process: ``bare`` (no tracker), ``exact`` (default float64 products) and
``fast`` (``precision="float32"``). Every round steps each copy once, in a
rotating order, and the per-round ratio ``t_tracked / t_bare`` is kept. The
median of these ratios is the reported overhead: a slow moment on a shared
machine hits all three steps of a round alike, so the ratio survives load far
better than absolute times do. The interquartile range of the ratios is
printed next to each figure as a noise indicator.

The *floor* is the time of the bare float64 batch products ``S S^T`` (the full
``d x d`` Gram product of every tracked layer's observation rows, on
pre-made float64 data in the faster feature-major layout), timed in the same
rounds as the bare step. Any exact
online covariance must do at least this much arithmetic unless it exploits
the symmetry of the product; the overhead is reported as a multiple of it.

Every Conv and Linear layer is tracked (the tracker's default discovery),
statistics ``lsat`` and ``idim``, ``torch.set_num_threads(2)`` unless
``--threads`` says otherwise. The load average before and after every
section is recorded, and a section run while the load exceeded the number of
threads is flagged as taken under load.

This script is not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from delve import SaturationTracker, TorchCovarianceMatrix  # noqa: E402
from delve.io import atomic_write  # noqa: E402
from delve.kernels import feature_blocks as _feature_blocks  # noqa: E402

STATS = ["lsat", "idim"]
MODES = ("exact", "fast")
PRECISION = {"exact": "float64", "fast": "float32"}


# --------------------------------------------------------------------- models
def mlp(width: int = 1024) -> nn.Module:
    """3072-1024-1024-512-10 by default; ``width`` scales the hidden layers."""
    return nn.Sequential(
        nn.Linear(3072, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width // 2), nn.ReLU(),
        nn.Linear(width // 2, 10),
    )


def vgg_cnn() -> nn.Module:
    """VGG-style: conv 64-64, pool, 128-128, pool, 256, global pool, linear."""

    def conv(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(3, 64), *conv(64, 64), nn.MaxPool2d(2),
        *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),
        *conv(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(256, 10),
    )


class LSTMClassifier(nn.Module):
    """Two-layer LSTM over 64-feature sequences, classified from the last step."""

    def __init__(self, features: int = 64, hidden: int = 256, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.lstm(x)
        return self.head(sequence[:, -1])


class TinyTransformer(nn.Module):
    """Two encoder layers (d_model 128, 4 heads, feed-forward 512), mean-pooled."""

    def __init__(self, features: int = 32, d_model: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


@dataclass
class Workload:
    name: str
    description: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], torch.Tensor]
    classes: int = 10


def workloads(mlp_width: int = 1024, mlp_batch: int = 256) -> dict[str, Workload]:
    return {
        "mlp": Workload(
            "mlp", f"MLP 3072-{mlp_width}-{mlp_width}-{mlp_width // 2}-10, batch {mlp_batch}",
            lambda: mlp(mlp_width), lambda g: torch.randn(mlp_batch, 3072, generator=g),
        ),
        "cnn": Workload(
            "cnn", "VGG-style CNN, 3x32x32, batch 64", vgg_cnn,
            lambda g: torch.randn(64, 3, 32, 32, generator=g),
        ),
        "lstm": Workload(
            "lstm", "LSTM classifier (2x256, 32 steps of 64 features), batch 64", LSTMClassifier,
            lambda g: torch.randn(64, 32, 64, generator=g),
        ),
        "transformer": Workload(
            "transformer", "Transformer encoder (2 layers, d 128, 64 tokens), batch 32", TinyTransformer,
            lambda g: torch.randn(32, 64, 32, generator=g),
        ),
    }


# --------------------------------------------------------------- measurement
def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@dataclass
class Section:
    """A timed part of the report, with the load it ran under."""

    title: str
    load_before: float = float("nan")
    load_after: float = float("nan")
    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def loaded(self, threads: int) -> bool:
        return max(self.load_before, self.load_after) > threads + 0.5


@contextlib.contextmanager
def section(report: list[Section], title: str) -> Iterator[Section]:
    entry = Section(title, load_before=load_average())
    report.append(entry)
    print(f"== {title} (load {entry.load_before:.2f})", file=sys.stderr, flush=True)
    gc.collect()
    try:
        yield entry
    finally:
        entry.load_after = load_average()


def make_step(model: nn.Module, batches: list[torch.Tensor], targets: list[torch.Tensor]) -> Callable[[], None]:
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    state = {"i": 0}

    def step() -> None:
        i = state["i"] % len(batches)
        state["i"] += 1
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batches[i]), targets[i])
        loss.backward()
        optimiser.step()

    return step


def observation_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
    """``(rows, d)`` of every tracked layer for one batch, read from a tracker."""
    shapes: list[tuple[int, int]] = []
    probe = SaturationTracker("probe", modules=model, nosave=True, stats=STATS)
    with torch.no_grad():
        model(x)
    for recorder in probe._recorders.values():
        for state in recorder.modes.values():
            cov = state.covariance
            shapes.append((cov.count, cov.num_features))
    probe.close()
    return shapes


def floor_products(shapes: list[tuple[int, int]], dtype: torch.dtype, upper: bool = False) -> Callable[[], None]:
    """The bare Gram products of pre-made data of these shapes.

    The data is stored feature-major, ``(d, n)``, and multiplied as ``S S^T``:
    on the benchmark machine that layout ran 10 to 30 % faster than
    ``A^T A`` on row-major ``(n, d)`` data, so the floor is the lower one.
    ``upper=True`` computes only the upper block triangle, in the column
    blocks delve uses: the least arithmetic an exact accumulator can do with
    these kernels.
    """
    data = [torch.randn(d, n, dtype=dtype) for n, d in shapes]
    blocks = [_feature_blocks(d) if upper else [(0, d)] for _, d in shapes]

    def run() -> None:
        for s, spans in zip(data, blocks):
            for start, stop in spans:
                torch.mm(s[start:stop], s[start:].t())

    return run


def accumulator_bytes(tracker: SaturationTracker) -> list[tuple[str, str, int, int]]:
    """``(layer, mode, bytes held, d)`` for every accumulator of a tracker."""
    out = []
    for name, recorder in tracker._recorders.items():
        for mode, state in recorder.modes.items():
            cov = state.covariance
            held = sum(
                value.untyped_storage().nbytes()
                for value in vars(cov).values()
                if isinstance(value, torch.Tensor)
            )
            out.append((name, mode, held, cov.num_features or 0))
    return out


def alternate(
    variants: dict[str, Callable[[], None]], rounds: int, warmup: int, clock: Callable[[], float]
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


def measure_overhead(
    work: Workload,
    rounds: int,
    warmup: int,
    clock: Callable[[], float],
    with_floor: bool = True,
    **tracker_kwargs: object,
) -> dict:
    """Alternating bare / exact / fast training steps of one workload."""
    torch.manual_seed(0)
    base = work.build()
    generator = torch.Generator().manual_seed(1)
    batches = [work.inputs(generator) for _ in range(4)]
    targets = [torch.randint(0, work.classes, (b.shape[0],), generator=generator) for b in batches]
    shapes = observation_shapes(copy.deepcopy(base), batches[0])

    variants: dict[str, Callable[[], None]] = {}
    trackers: dict[str, SaturationTracker] = {}
    models = {"bare": copy.deepcopy(base)}
    variants["bare"] = make_step(models["bare"], batches, targets)
    for mode in MODES:
        model = copy.deepcopy(base)
        trackers[mode] = SaturationTracker(
            f"bench-{mode}", modules=model, nosave=True, stats=STATS, precision=PRECISION[mode], **tracker_kwargs
        )
        models[mode] = model
        variants[mode] = make_step(model, batches, targets)
    if with_floor:
        variants["floor64"] = floor_products(shapes, torch.float64)
        variants["upper64"] = floor_products(shapes, torch.float64, upper=True)
        variants["upper32"] = floor_products(shapes, torch.float32, upper=True)

    memory_early = None
    # One step each first, so the memory check below sees allocated accumulators.
    for name in ("bare", *MODES):
        variants[name]()
    memory_early = {mode: accumulator_bytes(trackers[mode]) for mode in MODES}
    times = alternate(variants, rounds, warmup, clock)
    memory_late = {mode: accumulator_bytes(trackers[mode]) for mode in MODES}
    steps_taken = rounds + warmup + 1

    result = {
        "workload": work.description,
        "layers": len(shapes),
        "shapes": shapes,
        "bare_step_s": statistics.median(times["bare"]),
        "steps": steps_taken,
    }
    for mode in MODES:
        med, q1, q3 = ratio_stats(times[mode], times["bare"])
        result[mode] = {"ratio": med, "q1": q1, "q3": q3}
        early = sum(b for *_, b, _ in [(n, m, b, d) for n, m, b, d in memory_early[mode]])
        late = sum(b for *_, b, _ in [(n, m, b, d) for n, m, b, d in memory_late[mode]])
        result[mode]["memory_constant"] = early == late
    if with_floor:
        for kind in ("floor64", "upper64", "upper32"):
            med, q1, q3 = ratio_stats(times[kind], times["bare"])
            result[kind] = {"ratio": med, "q1": q1, "q3": q3}
    for tracker in trackers.values():
        tracker.close()
    return result


def fmt_pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f} %"


def overhead_row(result: dict, floor: bool = True) -> list[str]:
    cells = [result["workload"], f"{1e3 * result['bare_step_s']:.1f} ms"]
    for mode in MODES:
        r = result[mode]
        cells.append(f"{fmt_pct(r['ratio'])} [{fmt_pct(r['q1'])}, {fmt_pct(r['q3'])}]")
    if floor:
        f64 = result["floor64"]["ratio"]
        cells.append(f"{100 * f64:.1f} %")
        cells.append(f"{100 * result['upper64']['ratio']:.1f} % / {100 * result['upper32']['ratio']:.1f} %")
        cells.append(f"{(result['exact']['ratio'] - 1) / f64:.2f} x")
        cells.append(f"{(result['fast']['ratio'] - 1) / f64:.2f} x")
    return cells


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


OVERHEAD_HEADER = [
    "workload", "bare step", "exact overhead [IQR]", "fast overhead [IQR]",
    "floor (f64 products / bare step)", "upper blocks only, f64 / f32", "exact / floor", "fast / floor",
]


# ------------------------------------------------------------------ sections
def run_models(report: list[Section], names: list[str], rounds: int, warmup: int, clock) -> None:
    for name in names:
        work = workloads()[name]
        with section(report, f"overhead: {name}") as sec:
            result = measure_overhead(work, rounds, warmup, clock)
            sec.data = result
            sec.lines = table(OVERHEAD_HEADER, [overhead_row(result)])
            sec.lines.append("")
            sec.lines.append(
                f"{result['layers']} tracked layer-modes, observation rows x features per batch: "
                + ", ".join(f"{n}x{d}" for n, d in result["shapes"])
                + f". Accumulator memory constant over {result['steps']} steps: "
                + ", ".join(f"{m} {'yes' if result[m]['memory_constant'] else 'NO'}" for m in MODES)
                + "."
            )


def run_add_saturations(report: list[Section], repeats: int, train_steps: int) -> None:
    work = workloads()["mlp"]
    stats = ["lsat", "idim", "det", "trc", "dtrc"]
    with section(report, "add_saturations: mlp") as sec:
        torch.manual_seed(0)
        model = work.build()
        generator = torch.Generator().manual_seed(1)
        batches = [work.inputs(generator) for _ in range(train_steps)]
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, with_eval in (("train only", False), ("train + eval", True)):
                for mode in MODES:
                    tracker = SaturationTracker(
                        os.path.join(tmp, f"run-{mode}-{with_eval}"), save_to="csv", modules=model,
                        stats=stats, precision=PRECISION[mode],
                    )
                    timings = []
                    for _ in range(repeats):
                        model.train()
                        with torch.no_grad():
                            for b in batches:
                                model(b)
                            if with_eval:
                                model.eval()
                                model(batches[0])
                                model.train()
                        start = time.perf_counter()
                        tracker.add_saturations()
                        timings.append(time.perf_counter() - start)
                    tracker.close()
                    rows.append([label, mode, f"{statistics.median(timings):.3f} s", f"{min(timings):.3f} s"])
                    sec.data[f"{label}/{mode}"] = statistics.median(timings)
        sec.lines = table(["modes recorded", "precision", "add_saturations (median)", "min"], rows)
        sec.lines.append("")
        sec.lines.append(
            f"Statistics {', '.join(stats)}, csv writer, {train_steps} recorded batches per epoch, "
            f"median of {repeats} epochs. Includes fix(), the eigendecompositions and the csv write."
        )


def run_memory(report: list[Section], steps: int) -> None:
    with section(report, "accumulator memory") as sec:
        rows = []
        for name in ("mlp", "cnn"):
            work = workloads()[name]
            torch.manual_seed(0)
            model = work.build()
            generator = torch.Generator().manual_seed(1)
            batch = work.inputs(generator)
            for mode in MODES:
                tracker = SaturationTracker("mem", modules=model, nosave=True, stats=STATS, precision=PRECISION[mode])
                snapshots = []
                with torch.no_grad():
                    for step in range(steps):
                        model(batch)
                        model.eval()
                        model(batch)
                        model.train()
                        if step in (0, steps - 1):
                            snapshots.append({(n, m): (b, d) for n, m, b, d in accumulator_bytes(tracker)})
                peaks = transient_peaks(model, batch, tracker)
                for (layer, m), (held, d) in snapshots[0].items():
                    held_late = snapshots[-1][(layer, m)][0]
                    ratio = held / (d * d * 8)
                    rows.append([
                        name, mode, layer, m, str(d), f"{held / 2**20:.3f} MiB", f"{ratio:.3f}",
                        "yes" if held == held_late else f"NO ({held_late})",
                        peaks.get(layer, "n/a"),
                    ])
                tracker.close()
        sec.lines = table(
            ["model", "precision", "layer", "mode", "d", "held", "held / (d*d*8)", "constant over steps",
             "transient peak in one update / (d*d*8)"],
            rows,
        )
        sec.lines.append("")
        sec.lines.append(
            "held: bytes of every tensor the accumulator keeps between batches (co-moment, mean, "
            "counters). The transient peak is the largest extra allocation while one batch is merged "
            "(the centred batch and its product blocks), freed before the hook returns; read from "
            "torch.profiler's memory events."
        )


def transient_peaks(model: nn.Module, batch: torch.Tensor, tracker: SaturationTracker) -> dict[str, str]:
    """Peak extra bytes allocated during one update of each layer, via torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    observed: dict[str, torch.Tensor] = {}
    handles = []
    for layer in tracker.layers:
        def keep(module, inputs, output, name=layer.name):
            observed[name] = output.detach()
        handles.append(layer.module.register_forward_hook(keep))
    tracker.stop()
    with torch.no_grad():
        model(batch)
    tracker.resume()
    for h in handles:
        h.remove()
    peaks = {}
    for name, output in observed.items():
        recorder = tracker._recorders[name]
        layer = next(layer for layer in tracker.layers if layer.name == name)
        from delve.observations import observe

        rows = observe(layer.module, output, tracker.observation, name)
        acc = TorchCovarianceMatrix(precision=tracker.precision)
        acc.update_rows(rows)  # allocate the state first, outside the profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            acc.update_rows(rows)
        events = sorted(
            (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
        )
        live = peak = 0
        for e in events:
            live += e.self_cpu_memory_usage
            peak = max(peak, live)
        d = acc.num_features
        peaks[name] = f"{peak / (d * d * 8):.3f} ({peak / 2**20:.2f} MiB)"
        del recorder
    return peaks


def run_max_positions(report: list[Section], limits: list[int], rounds: int, warmup: int, clock) -> None:
    """Overhead and effect on saturation of recording fewer spatial positions (CNN)."""
    work = workloads()["cnn"]
    with section(report, "max_positions (CNN)") as sec:
        rows = []
        for limit in limits:
            result = measure_overhead(work, rounds, warmup, clock, with_floor=False, max_positions=limit)
            result["workload"] = f"CNN, max_positions={limit}"
            rows.append(overhead_row(result, floor=False))
            sec.data[f"overhead {limit}"] = result
        sec.lines = table(OVERHEAD_HEADER[:4], rows)
        sec.lines.append("")

        # Effect on the statistics: trackers with and without the limit watch the same passes.
        torch.manual_seed(0)
        model = work.build()
        generator = torch.Generator().manual_seed(1)
        batches = [work.inputs(generator) for _ in range(6)]
        targets = [torch.randint(0, 10, (b.shape[0],), generator=generator) for b in batches]
        step = make_step(model, batches, targets)
        for _ in range(30):  # move away from the random initialisation
            step()
        trackers = {
            limit: SaturationTracker("mp", modules=model, nosave=True, stats=STATS, max_positions=limit)
            for limit in [None, *limits]
        }
        with torch.no_grad():
            for batch in batches:
                model(batch)
        values = {limit: tracker.add_saturations() for limit, tracker in trackers.items()}
        for tracker in trackers.values():
            tracker.close()
        names = [key for key in values[None] if "saturation" in key]
        header = ["layer", "all positions", *[f"max_positions={limit}" for limit in limits]]
        sat_rows = [
            [name.split("_", 1)[1], f"{values[None][name]:.4f}"]
            + [f"{values[limit][name]:.4f} ({values[limit][name] - values[None][name]:+.4f})" for limit in limits]
            for name in names
        ]
        sec.lines += table(header, sat_rows)
        sec.lines.append("")
        sec.lines.append(
            "Saturation (lsat, threshold 0.99) of the CNN after 30 training steps, over 6 batches of 64 images; "
            "the 32x32 maps have 1024 positions, the 16x16 ones 256 and the 8x8 ones 64."
        )
        sec.data["saturation"] = {str(k): v for k, v in values.items()}


def run_scaling(report: list[Section], widths: list[int], batches: list[int], rounds: int, warmup: int, clock) -> None:
    with section(report, "scaling: width") as sec:
        rows = []
        for width in widths:
            work = workloads(mlp_width=width)["mlp"]
            result = measure_overhead(work, rounds, warmup, clock)
            rows.append(overhead_row(result))
            sec.data[width] = result
            print(f"   width {width}: {rows[-1]}", file=sys.stderr, flush=True)
        sec.lines = table(OVERHEAD_HEADER, rows)
    with section(report, "scaling: batch size") as sec:
        rows = []
        for batch in batches:
            work = workloads(mlp_batch=batch)["mlp"]
            result = measure_overhead(work, rounds, warmup, clock)
            rows.append(overhead_row(result))
            sec.data[batch] = result
            print(f"   batch {batch}: {rows[-1]}", file=sys.stderr, flush=True)
        sec.lines = table(OVERHEAD_HEADER, rows)


# ------------------------------------------------------------------- report
def machine_description(threads: int) -> list[str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "delve"], capture_output=True, text=True
        ).stdout.strip()
        if dirty:
            commit += " (delve/ has uncommitted changes)"
    parallel = torch.__config__.parallel_info().splitlines()
    backend = next((line.strip() for line in parallel if "backend" in line.lower()), "")
    blas = "MKL" if torch.backends.mkl.is_available() else "other BLAS"
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical CPUs visible, torch threads: {threads} ({backend}, {blas})",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}",
        f"- delve commit: {commit}",
    ]


def render(report: list[Section], args: argparse.Namespace, command: str, threads: int) -> str:
    out = [
        "# delve tracking overhead: benchmark results",
        "",
        "Reproduce with:",
        "",
        "```",
        command,
        "```",
        "",
        "Machine:",
        "",
        *machine_description(threads),
        f"- clock: {'process CPU time' if args.clock == 'cpu' else 'wall clock'}; "
        f"{args.rounds} alternating rounds after {args.warmup} warm-up rounds per model"
        + (" (--quick)" if args.quick else ""),
        "",
        "Overhead = median over rounds of t(tracked step) / t(bare step) - 1; brackets: interquartile",
        "range of the per-round ratio. Floor = full float64 Gram products of all tracked layers'",
        "observation rows (feature-major S S^T, the faster layout), as a fraction of the bare step;",
        "'exact / floor' = overhead / floor. 'Upper blocks only': the same products restricted to the",
        "upper block triangle in delve's column blocks, in float64 and float32: what an exact and a fast",
        "accumulator must at least compute with these kernels.",
        "",
    ]
    for sec in report:
        flag = " **(taken under load)**" if sec.loaded(threads) else ""
        out.append(f"## {sec.title}")
        out.append("")
        out.append(f"Load average before / after: {sec.load_before:.2f} / {sec.load_after:.2f}{flag}")
        out.append("")
        out.extend(sec.lines)
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, narrow scaling table (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per model")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds per model")
    parser.add_argument(
        "--only", nargs="+", default=None,
        choices=["mlp", "cnn", "lstm", "transformer", "add_saturations", "memory", "max_positions", "scaling"],
        help="run only these sections",
    )
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall clock (default) or process CPU time (steadier under load with --threads 1)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="also dump the raw figures as JSON")
    args = parser.parse_args(argv)

    if args.rounds is None:
        args.rounds = 12 if args.quick else 60
    if args.warmup is None:
        args.warmup = 2 if args.quick else 5
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sections = args.only or [
        "mlp", "cnn", "lstm", "transformer", "add_saturations", "memory", "max_positions", "scaling"
    ]
    command = "python benchmarks/benchmark.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))

    report: list[Section] = []
    models = [name for name in ("mlp", "cnn", "lstm", "transformer") if name in sections]
    run_models(report, models, args.rounds, args.warmup, clock)
    if "add_saturations" in sections:
        run_add_saturations(report, repeats=3 if args.quick else 7, train_steps=4)
    if "memory" in sections:
        run_memory(report, steps=3 if args.quick else 10)
    if "max_positions" in sections:
        run_max_positions(report, [256, 64], max(6, args.rounds // 2), args.warmup, clock)
    if "scaling" in sections:
        widths = [256, 1024] if args.quick else [256, 512, 1024, 2048, 4096]
        batch_sizes = [64, 256] if args.quick else [32, 64, 128, 256, 512, 1024]
        scale_rounds = max(6, args.rounds // 3)
        run_scaling(report, widths, batch_sizes, scale_rounds, max(1, args.warmup // 2), clock)

    text = render(report, args, command.strip(), args.threads)
    print(text)
    if args.output:
        atomic_write(args.output, lambda handle: handle.write(text + "\n"))
    if args.json:
        dump = json.dumps([vars(s) for s in report], indent=1, default=str)
        atomic_write(args.json, lambda handle: handle.write(dump))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
