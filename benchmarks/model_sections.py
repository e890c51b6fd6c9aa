"""Per-model sections: overhead in every mode, product floor, add_saturations time, state size."""

from __future__ import annotations

import copy
import sys
from collections import Counter
from typing import Any

import torch
from harness import CPU_MODES, Clock, measure_overhead, observation_shapes
from report import Section, fmt_bytes, fmt_pct, mode_cell, overhead_header, overhead_row, section, table, widest_layers
from workloads import Workload, workloads

__all__ = ["run_models", "summary_section", "describe"]


def run_models(
    report: list[Section],
    plan: dict[str, tuple[int, int]],
    clock: Clock,
    saturation_repeats: int = 3,
    modes: tuple[str, ...] = CPU_MODES,
) -> None:
    """One section per model of ``plan`` (name -> rounds, warm-up rounds), then a summary placed before them."""
    added = []
    for name, (rounds, warmup) in plan.items():
        work = workloads()[name]
        with section(report, f"overhead: {name}") as sec:
            result = measure_overhead(work, rounds, warmup, clock, modes=modes, saturation_repeats=saturation_repeats)
            sec.data = result
            sec.lines = model_lines(result, modes, saturation_repeats)
        added.append(sec)
        print("   " + " | ".join(overhead_row(result, modes=modes)), file=sys.stderr, flush=True)
    if len(added) > 1:
        report.insert(report.index(added[0]), summary_section(added, modes))


def model_lines(result: dict[str, Any], modes: tuple[str, ...], saturation_repeats: int) -> list[str]:
    """The overhead table, what was tracked, the per-mode costs and the per-layer state."""
    lines = table(overhead_header(modes), [overhead_row(result, modes=modes)])
    kinds = Counter(layer["kind"] for layer in result["layer_shapes"])
    memory = ", ".join(
        f"{mode} {'yes' if result[mode]['memory_constant'] else 'NO'}"
        for mode in modes
        if result[mode].get("supported")
    )
    lines += [
        "",
        f"{result['layers']} tracked layers ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}), "
        f"{result['parameters'] / 1e6:.2f} M parameters, weights {fmt_bytes(result['weights_bytes'])}; "
        f"widest: {widest_layers(result)}. {result['rounds']} rounds after {result['warmup']} warm-up rounds, "
        f"{result['round_s']:.2f} s per round, {result['wall_s']:.0f} s in all; "
        f"accumulator memory constant over {result['steps']} steps: {memory}.",
        "",
    ]
    if saturation_repeats <= 0:
        return lines
    rows = []
    for mode in modes:
        r = result[mode]
        if not r.get("supported"):
            rows.append([mode, "n/a", "n/a", "n/a"])
            continue
        rows.append([
            mode, f"{r['add_saturations_s']:.3f} s",
            fmt_bytes(r["state_bytes"]), f"{r['state_bytes'] / result['weights_bytes']:.2f} x",
        ])
    lines += table(
        ["mode", f"add_saturations (median of {saturation_repeats})", "tracker state (torch.save)", "state / weights"],
        rows,
    )
    lines += ["", *layer_table(result, modes)]
    return lines


def layer_table(result: dict[str, Any], modes: tuple[str, ...]) -> list[str]:
    """Rows x features per batch of every tracked layer, and its saved state against ``d*d*8``."""
    measured = [mode for mode in modes if result[mode].get("supported")]
    rows = []
    for layer in result["layer_shapes"]:
        d = layer["d"]
        cells = [layer["name"], layer["kind"], f"{layer['rows']} x {d}", fmt_bytes(d * d * 8)]
        for mode in measured:
            saved = result[mode]["layer_state_bytes"].get(layer["name"], {})
            cells.append(
                " / ".join(f"{fmt_bytes(size)} ({size / (d * d * 8):.3f})" for size in saved.values()) or "-"
            )
        rows.append(cells)
    header = ["layer", "kind", "rows x d per batch", "d*d*8", *[f"{mode} state (/ d*d*8)" for mode in measured]]
    return [
        *table(header, rows),
        "",
        "State: bytes of torch.save of the layer's part of tracker.state_dict() after the timed rounds "
        "(training mode only), against the d*d*8 bytes of one float64 co-moment.",
    ]


def summary_section(sections: list[Section], modes: tuple[str, ...]) -> Section:
    """One table over all models, placed before their own sections."""
    rows = []
    for sec in sections:
        r = sec.data
        measured = [mode for mode in modes if r[mode].get("supported")]
        saturations = " / ".join(
            f"{r[mode]['add_saturations_s']:.2f} s" if "add_saturations_s" in r[mode] else "-" for mode in measured
        )
        state = " / ".join(fmt_bytes(r[mode]["state_bytes"]) if "state_bytes" in r[mode] else "-" for mode in measured)
        rows.append([
            r["workload"], str(r["layers"]), f"{r['parameters'] / 1e6:.2f} M", fmt_bytes(r["weights_bytes"]),
            f"{1e3 * r['bare_step_s']:.0f} ms", *[_short(r, mode) for mode in modes],
            f"{100 * r['floor64']['ratio']:.1f} %",
            f"{100 * r['upper64']['ratio']:.1f} % / {100 * r['upper32']['ratio']:.1f} %",
            f"{saturations} ({'/'.join(measured)})", f"{state} ({'/'.join(measured)})",
        ])
    summary = Section(
        "summary: models",
        load_before=min(sec.load_before for sec in sections),
        load_after=max(sec.load_after for sec in sections),
    )
    summary.lines = table(
        ["workload", "tracked layers", "parameters", "weights", "bare step", *[f"{m} overhead" for m in modes],
         "floor (f64 products)", "upper blocks f64 / f32", "add_saturations", "tracker state"],
        rows,
    )
    summary.lines += [
        "",
        "Medians over each model's rounds; interquartile ranges in the model's own section. Floors as a "
        "fraction of the bare step. Load: lowest before / highest after the model sections.",
    ]
    return summary


def _short(result: dict[str, Any], mode: str) -> str:
    r = result[mode]
    return fmt_pct(r["ratio"]) if r.get("supported") else mode_cell(result, mode)


def describe(names: list[str], work_of: dict[str, Workload] | None = None) -> list[str]:
    """Build each model, check its output shape with one forward pass, list what a tracker sees."""
    work_of = work_of or workloads()
    lines = []
    for name in names:
        work = work_of[name]
        torch.manual_seed(0)
        model = work.build()
        generator = torch.Generator().manual_seed(1)
        x = work.inputs(generator)
        y = work.targets(x, work.classes, generator)
        with torch.no_grad():
            out = model(x)
        # The loss accepts the output only if its shape matches the targets'.
        loss = work.loss(out, y)
        layers = observation_shapes(copy.deepcopy(model), x)
        params = sum(p.numel() for p in model.parameters())
        lines.append(
            f"{name}: {work.title}; input {tuple(x.shape)} -> output {tuple(out.shape)}, loss {loss.item():.3f}; "
            f"{params / 1e6:.2f} M parameters, {len(layers)} tracked layers"
        )
        widest = sorted(layers, key=lambda layer: -layer.d)[:3]
        lines.append("  widest: " + ", ".join(f"{layer.name} d={layer.d}" for layer in widest))
        lines.append("  rows x d: " + ", ".join(f"{layer.name} {layer.rows}x{layer.d}" for layer in layers))
    return lines
