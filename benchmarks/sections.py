"""Sections beyond the per-model overhead: add_saturations, memory, max_positions, scaling."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch
from harness import BASE_MODES, MODE_SPECS, STATS, Clock, accumulator_bytes, make_step, measure_overhead
from report import Section, overhead_header, overhead_row, section, table
from torch import nn
from workloads import workloads

from delve import SaturationTracker, TorchCovarianceMatrix
from delve.capture.observation import observe

__all__ = ["run_add_saturations", "run_memory", "transient_peaks", "run_max_positions", "run_scaling"]


def _precision(mode: str) -> str:
    return str(MODE_SPECS[mode].kwargs["precision"])


def run_add_saturations(report: list[Section], repeats: int, train_steps: int) -> None:
    """add_saturations of the MLP with five statistics and a csv writer, train only and train + eval."""
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
                for mode in BASE_MODES:
                    tracker = SaturationTracker(
                        os.path.join(tmp, f"run-{mode}-{with_eval}"), save_to="csv", modules=model,
                        stats=stats, precision=_precision(mode),
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
    """Bytes every accumulator holds, constant over steps, and the transient peak of one update."""
    with section(report, "accumulator memory") as sec:
        rows = []
        for name in ("mlp", "cnn"):
            work = workloads()[name]
            torch.manual_seed(0)
            model = work.build()
            generator = torch.Generator().manual_seed(1)
            batch = work.inputs(generator)
            for mode in BASE_MODES:
                tracker = SaturationTracker("mem", modules=model, nosave=True, stats=STATS, precision=_precision(mode))
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
        def keep(module: nn.Module, inputs: object, output: torch.Tensor, name: str = layer.name) -> None:
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
        layer = next(layer for layer in tracker.layers if layer.name == name)
        rows = observe(layer.module, output, tracker.config.observation, name)
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
    return peaks


def run_max_positions(report: list[Section], limits: list[int], rounds: int, warmup: int, clock: Clock) -> None:
    """Overhead and effect on saturation of recording fewer spatial positions (CNN)."""
    work = workloads()["cnn"]
    with section(report, "max_positions (CNN)") as sec:
        rows = []
        for limit in limits:
            result = measure_overhead(work, rounds, warmup, clock, with_floor=False, max_positions=limit)
            result["workload"] = f"CNN, max_positions={limit}"
            rows.append(overhead_row(result, floor=False))
            sec.data[f"overhead {limit}"] = result
        sec.lines = table(overhead_header(floor=False), rows)
        sec.lines.append("")

        # Effect on the statistics: trackers with and without the limit watch the same passes.
        torch.manual_seed(0)
        model = work.build()
        generator = torch.Generator().manual_seed(1)
        batches = [work.inputs(generator) for _ in range(6)]
        targets = [work.targets(b, work.classes, generator) for b in batches]
        step = make_step(model, work, batches, targets)
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


def run_scaling(
    report: list[Section], widths: list[int], batches: list[int], rounds: int, warmup: int, clock: Clock
) -> None:
    """The MLP's overhead against its width and its batch size (exact and fast modes)."""
    with section(report, "scaling: width") as sec:
        rows = []
        for width in widths:
            work = workloads(mlp_width=width)["mlp"]
            result = measure_overhead(work, rounds, warmup, clock)
            rows.append(overhead_row(result))
            sec.data[width] = result
            print(f"   width {width}: {rows[-1]}", file=sys.stderr, flush=True)
        sec.lines = table(overhead_header(), rows)
    with section(report, "scaling: batch size") as sec:
        rows = []
        for batch in batches:
            work = workloads(mlp_batch=batch)["mlp"]
            result = measure_overhead(work, rounds, warmup, clock)
            rows.append(overhead_row(result))
            sec.data[batch] = result
            print(f"   batch {batch}: {rows[-1]}", file=sys.stderr, flush=True)
        sec.lines = table(overhead_header(), rows)
