"""What a budget cannot go below: the tracker's fixed costs with (almost) no rows kept.

Copies of one model train in alternating rounds: bare, ``max_overhead=0.05``,
and ``max_overhead=1e-6`` (one row per layer and batch: what remains is the
hooks, the observation, the draw of rows and the bookkeeping, not the
products). The last is the floor under any budget on that model. Optionally
``--shifted`` also compares exact mode with the float64 shifted route on and
off (``delve.engine.products.SHIFTED_FLOAT64``), in the same rounds.

Run: ``python benchmarks/budget_floor.py --models cnn,vit,gpt``.
This script is not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import STATS, alternate, make_step, ratio_stats
from workloads import workloads

from delve import SaturationTracker
from delve.engine import products as kernels

VARIANTS: dict[str, dict] = {"budget 0.05": {"max_overhead": 0.05}, "fixed costs": {"max_overhead": 1e-6}}


def _with_shifted(step: Callable[[], None], shifted: bool) -> Callable[[], None]:
    def run() -> None:
        kernels.SHIFTED_FLOAT64 = shifted
        try:
            step()
        finally:
            kernels.SHIFTED_FLOAT64 = True

    return run


def measure(name: str, rounds: int, warmup: int, shifted: bool) -> dict[str, tuple[float, float, float]]:
    """Median ratio (and quartiles) to the bare step of every variant."""
    work = workloads()[name]
    generator = torch.Generator().manual_seed(0)
    batches = [work.inputs(generator) for _ in range(4)]
    targets = [work.targets(b, work.classes, generator) for b in batches]
    variants = dict(VARIANTS)
    if shifted:
        variants |= {"exact, shifted": {"precision": "float64"}, "exact, centred": {"precision": "float64"}}
    torch.manual_seed(0)
    bare = work.build()
    steps = {"bare": make_step(bare, work, batches, targets)}
    trackers = []
    for label, kwargs in variants.items():
        model = work.build()
        model.load_state_dict(bare.state_dict())
        trackers.append(SaturationTracker(label, modules=model, nosave=True, stats=STATS, **kwargs))
        step = make_step(model, work, batches, targets)
        steps[label] = _with_shifted(step, label != "exact, centred")
    times = alternate(steps, rounds, warmup, time.perf_counter)
    for tracker in trackers:
        tracker.close()
    return {label: ratio_stats(times[label], times["bare"]) for label in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,transformer,vit,gpt")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shifted", action="store_true", help="also exact mode with the shifted route on and off")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        for label, (median, low, high) in measure(name, args.rounds, args.warmup, args.shifted).items():
            spread = f"[{100 * (low - 1):+.1f}, {100 * (high - 1):+.1f}]"
            print(f"| {name} | {label} | {100 * (median - 1):+.1f} % {spread} |", flush=True)


if __name__ == "__main__":
    main()
