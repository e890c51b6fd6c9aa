"""What live probes add to a training step: tracking with and without ``stats=["probe"]``, exact and budget.

For each model, five variants train the same weights on the same batches, one
step each per round in a rotating order: bare, exact, exact with probes,
``max_overhead=0.05``, and the same with probes. Probe targets are one class
per sample (ten classes), set before every step as a training loop would.
The table gives the median over rounds of each variant's step against the
bare step, the probes' part (the per-round difference with and without them)
and what the cost model estimated for the probes (the ``probe`` column of
``tracker.cost()``, summed over layers against their training).

Run: ``python benchmarks/probe_cost.py --output benchmarks/RESULTS.md`` (replaces its section).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import STATS, alternate, make_step, ratio_stats
from report import KEPT_PREFIX, replace_section
from workloads import SECTION1_MODELS, workloads

from delve import SaturationTracker
from delve.common.files import atomic_write

CLASSES = 10
VARIANTS = {
    "exact": {"precision": "float64"},
    "exact+probe": {"precision": "float64", "stats": [*STATS, "probe"]},
    "budget": {"max_overhead": 0.05},
    "budget+probe": {"max_overhead": 0.05, "stats": [*STATS, "probe"]},
}


def measure(name: str, rounds: int, warmup: int) -> dict[str, object]:
    """Per variant the median step ratio against bare (and its IQR), and the estimated probe share."""
    work = workloads()[name]
    generator = torch.Generator().manual_seed(0)
    batches = [work.sample(generator, work.batch) for _ in range(4)]
    targets = [work.targets(b, work.classes, generator) for b in batches]
    labels = [torch.randint(0, CLASSES, (work.batch,), generator=generator) for _ in batches]
    torch.manual_seed(0)
    bare = work.build()
    steps = {"bare": make_step(bare, work, batches, targets)}
    trackers: dict[str, SaturationTracker] = {}
    for variant, kwargs in VARIANTS.items():
        model = work.build()
        model.load_state_dict(bare.state_dict())
        kwargs = {"stats": STATS, **kwargs}
        tracker = trackers[variant] = SaturationTracker(f"probe-{variant}", modules=model, nosave=True, **kwargs)
        step = make_step(model, work, batches, targets)
        if tracker.probes:
            steps[variant] = _probing(step, tracker, labels)
        else:
            steps[variant] = step
    times = alternate(steps, rounds, warmup, time.perf_counter)
    result: dict[str, object] = {"bare_ms": 1e3 * statistics.median(times["bare"])}
    for variant in VARIANTS:
        result[variant] = ratio_stats(times[variant], times["bare"])
    for plain in ("exact", "budget"):
        extra = [(p - q) / b for p, q, b in zip(times[f"{plain}+probe"], times[plain], times["bare"])]
        result[f"{plain} probe part"] = statistics.median(extra)
        table = trackers[f"{plain}+probe"].cost()
        result[f"{plain} probe estimate"] = float((table["probe"] * table["training"]).sum() / table["training"].sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the notices of an epoch cut short by the benchmark
        for tracker in trackers.values():
            tracker.close()
    return result


def _probing(step, tracker: SaturationTracker, labels: list[torch.Tensor]):
    """The step with the batch's labels set first, cycling with the batches."""
    state = {"i": 0}

    def probed() -> None:
        tracker.set_targets(labels[state["i"] % len(labels)], num_classes=CLASSES)
        state["i"] += 1
        step()

    return probed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SECTION1_MODELS))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="replace this script's section of a report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "| model | bare step | exact | exact + probes | probes' part (estimate) | budget | budget + probes | "
        "probes' part (estimate) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models.split(","):
        r = measure(name, args.rounds, args.warmup)
        cells = [name, f"{r['bare_ms']:.0f} ms"]
        for plain in ("exact", "budget"):
            for variant in (plain, f"{plain}+probe"):
                median, low, high = r[variant]  # type: ignore[misc]
                cells.append(f"{100 * (median - 1):+.1f} % [{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]")
            cells.append(f"{100 * r[f'{plain} probe part']:+.1f} % ({100 * r[f'{plain} probe estimate']:.1f} %)")
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    if args.output:
        head = (
            f"`python benchmarks/probe_cost.py --models {args.models} --rounds {args.rounds}`, "
            f"{time.strftime('%Y-%m-%d')}, torch threads {args.threads}. Median over rounds of each variant's step "
            "against the bare step [IQR]; the probes' part is the median per-round difference with and without "
            "them, beside the cost model's estimate (the probe column of tracker.cost())."
        )
        text = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        body = "\n".join([head, "", *lines])
        heading = f"{KEPT_PREFIX[1]} live probes"
        atomic_write(args.output, lambda handle: handle.write(replace_section(text, heading, body)))


if __name__ == "__main__":
    main()
