"""Overhead of delve's SaturationTracker on CPU training, measured side by side.

Reproduce everything (under 15 minutes on 2 quiet cores)::

    python benchmarks/benchmark.py --output benchmarks/RESULTS.md

Only some models, fewer rounds::

    python benchmarks/benchmark.py --models resnet18,vit,gpt,effnet --rounds 8

List the models, their tracked layers and rows per batch (one forward pass each)::

    python benchmarks/benchmark.py --describe

Method
------
Copies of one model (same initial weights, same batches) train in one
process: ``bare`` (no tracker), ``exact`` (default float64 products),
``fast`` (``precision="float32"``) and ``budget`` (``max_overhead=0.05``,
reported as not supported where this delve lacks the argument). Every round
steps each copy once, in a rotating order, and the per-round ratio
``t_tracked / t_bare`` is kept. The median of these ratios is the reported
overhead: a slow moment on a shared machine hits all steps of a round alike,
so the ratio survives load far better than absolute times do. The
interquartile range of the ratios is printed next to each figure as a noise
indicator.

The *floor* is the time of the bare float64 batch products ``S S^T`` (the full
``d x d`` Gram product of every tracked layer's observation rows, on
pre-made float64 data in the faster feature-major layout), timed in the same
rounds as the bare step. Any exact online covariance must do at least this
much arithmetic unless it exploits the symmetry of the product; the overhead
is reported as a multiple of it.

After the rounds, each tracker's state is serialised (``torch.save`` of
``state_dict()``) and ``add_saturations`` is timed (median of a few calls).

Every Conv and Linear layer is tracked (the tracker's default discovery),
statistics ``lsat`` and ``idim``, ``torch.set_num_threads(2)`` unless
``--threads`` says otherwise. The load average before and after every
section is recorded, and a section run while the load exceeded the number of
threads is flagged as taken under load.

This script is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CPU_MODES, MODE_SPECS, unsupported_arguments  # noqa: E402
from model_sections import describe, run_models  # noqa: E402
from report import Section, kept_sections, machine_description  # noqa: E402
from sections import run_add_saturations, run_max_positions, run_memory, run_scaling  # noqa: E402
from workloads import MODEL_NAMES, workloads  # noqa: E402
from writer_times import run_writers  # noqa: E402

from delve.common.files import atomic_write  # noqa: E402

OTHER_SECTIONS = ("add_saturations", "writers", "memory", "max_positions", "scaling")
SECTIONS = (*MODEL_NAMES, *OTHER_SECTIONS)


def model_plan(names: list[str], args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """``(rounds, warm-up rounds)`` per model.

    ``--rounds`` / ``--warmup`` apply to every model; otherwise each workload
    has its own, sized to its step time, and ``--quick`` takes a fifth of
    the rounds (at least 4) and at most 2 warm-up rounds.
    """
    defaults = workloads()
    plan = {}
    for name in names:
        work = defaults[name]
        rounds = max(4, work.rounds // 5) if args.quick else work.rounds
        warmup = min(2, work.warmup) if args.quick else work.warmup
        plan[name] = (args.rounds or rounds, args.warmup if args.warmup is not None else warmup)
    return plan


def render(report: list[Section], args: argparse.Namespace, command: str, threads: int) -> str:
    budget_missing = unsupported_arguments(MODE_SPECS["budget"].kwargs)
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
        + (f"{args.rounds} alternating rounds" if args.rounds else "each model's own number of rounds")
        + (f" after {args.warmup} warm-up rounds" if args.warmup is not None else " and warm-up rounds")
        + " (see each model's section)"
        + (" (--quick)" if args.quick else ""),
        "- budget mode (max_overhead=0.05): "
        + ("supported" if not budget_missing else "not supported by this delve (no such tracker argument)"),
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


def parse_models(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODEL_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown models {unknown}; choose from {', '.join(MODEL_NAMES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, narrow scaling table (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per model (default: per model)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds per model")
    parser.add_argument(
        "--only", nargs="+", default=None, choices=SECTIONS, help="run only these sections (models or others)",
    )
    parser.add_argument(
        "--models", type=parse_models, default=None,
        help=f"comma-separated models to run ({','.join(MODEL_NAMES)}); with --only, the union is run",
    )
    parser.add_argument(
        "--saturation-repeats", type=int, default=None,
        help="add_saturations calls timed per model and mode (default 3, 2 with --quick; 0 skips them)",
    )
    parser.add_argument("--describe", action="store_true", help="list the models' tracked layers and exit")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall clock (default) or process CPU time (steadier under load with --threads 1)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="also dump the raw figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.saturation_repeats is None:
        args.saturation_repeats = 2 if args.quick else 3
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    chosen = set(args.only or []) | set(args.models or [])
    sections = [name for name in SECTIONS if name in chosen] if chosen else list(SECTIONS)
    models = [name for name in MODEL_NAMES if name in sections]
    if args.describe:
        print("\n".join(describe(models)))
        return 0
    command = "python benchmarks/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    base_rounds = args.rounds or (12 if args.quick else 60)
    base_warmup = args.warmup if args.warmup is not None else 2 if args.quick else 5

    started = time.perf_counter()
    report: list[Section] = []
    run_models(report, model_plan(models, args), clock, args.saturation_repeats, CPU_MODES)
    if "add_saturations" in sections:
        run_add_saturations(report, repeats=3 if args.quick else 7, train_steps=4)
    if "writers" in sections:
        run_writers(report, repeats=2 if args.quick else 3)
    if "memory" in sections:
        run_memory(report, steps=3 if args.quick else 10)
    if "max_positions" in sections:
        run_max_positions(report, [256, 64], max(6, base_rounds // 2), base_warmup, clock)
    if "scaling" in sections:
        widths = [256, 1024] if args.quick else [256, 512, 1024, 2048, 4096]
        batch_sizes = [64, 256] if args.quick else [32, 64, 128, 256, 512, 1024]
        scale_rounds = max(6, base_rounds // 3)
        run_scaling(report, widths, batch_sizes, scale_rounds, max(1, base_warmup // 2), clock)

    text = render(report, args, command.strip(), args.threads)
    text += f"\nThe whole run took {(time.perf_counter() - started) / 60:.1f} minutes.\n"
    print(text)
    if args.output:
        previous = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        kept = kept_sections(previous)
        final = text + ("\n" + kept + "\n" if kept else "")
        atomic_write(args.output, lambda handle: handle.write(final + "\n"))
    if args.json:
        dump = json.dumps([vars(s) for s in report], indent=1, default=str)
        atomic_write(args.json, lambda handle: handle.write(dump))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
