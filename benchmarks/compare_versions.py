"""Two versions of delve in one process: is the hot path slower than at an earlier commit?

The package at ``--base`` (a git revision) is extracted into a temporary folder
under another name (delve's own imports are relative, so it runs renamed) and
imported beside the working tree's. Three copies of one model (same weights,
same batches) then train in alternating rounds: without a tracker, with the
current tracker and with the earlier one. The report gives, per model, each
tracker's median ratio to the bare step and the median of the per-round
ratios current / earlier (below 1: the current code is faster). Both trackers
run the same configuration: default arguments, statistics ``lsat`` and
``idim``, no files written.

Run::

    python benchmarks/compare_versions.py --base 1d058fa --models mlp,cnn --output benchmarks/RESULTS.md

With ``--output``, the table replaces the section ``## versions: current against <base>``
of that file (``benchmark.py`` keeps such sections when it rewrites the file). This script is
not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import STATS, alternate, make_step, ratio_stats  # noqa: E402
from report import KEPT_PREFIX, replace_section  # noqa: E402
from workloads import workloads  # noqa: E402

import delve  # noqa: E402
from delve.common.files import atomic_write  # noqa: E402


def import_revision(revision: str, folder: Path) -> object:
    """Import the ``delve`` package of a git revision as ``delve_base``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", revision, "delve"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "delve").rename(folder / "delve_base")
    sys.path.insert(0, str(folder))
    return importlib.import_module("delve_base")


def compare(name: str, base: object, rounds: int, warmup: int) -> dict[str, float]:
    """Median ratios to the bare step of both trackers, and current / earlier per round."""
    work = workloads()[name]
    generator = torch.Generator().manual_seed(0)
    batches = [work.inputs(generator) for _ in range(4)]
    targets = [work.targets(b, work.classes, generator) for b in batches]
    torch.manual_seed(0)
    models = {"bare": work.build(), "current": work.build(), "earlier": work.build()}
    models["current"].load_state_dict(models["bare"].state_dict())
    models["earlier"].load_state_dict(models["bare"].state_dict())
    trackers = [
        delve.SaturationTracker("current", modules=models["current"], nosave=True, stats=STATS),
        base.SaturationTracker("earlier", modules=models["earlier"], nosave=True, stats=STATS),
    ]
    steps = {key: make_step(model, work, batches, targets) for key, model in models.items()}
    times = alternate(steps, rounds, warmup, time.perf_counter)
    for tracker in trackers:
        tracker.close()
    current, _, _ = ratio_stats(times["current"], times["bare"])
    earlier, _, _ = ratio_stats(times["earlier"], times["bare"])
    versus = statistics.median(a / b for a, b in zip(times["current"], times["earlier"]))
    return {"bare_ms": 1e3 * statistics.median(times["bare"]), "current": current, "earlier": earlier, "versus": versus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier git revision")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated keys of benchmarks/workloads.py")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="replace this comparison's section of a report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the trackers' one-time notices would interleave with the table
    with tempfile.TemporaryDirectory() as folder:
        base = import_revision(args.base, Path(folder))
        lines = [
            f"| model | bare step | current | {args.base} | current / {args.base} (per round) |",
            "|---|---|---|---|---|",
        ]
        print("\n".join(lines))
        for name in args.models.split(","):
            r = compare(name, base, args.rounds, args.warmup)
            lines.append(
                f"| {name} | {r['bare_ms']:.0f} ms | +{100 * (r['current'] - 1):.1f} % | "
                f"+{100 * (r['earlier'] - 1):.1f} % | {r['versus']:.3f} |"
            )
            print(lines[-1], flush=True)
    if args.output:
        head = describe_revision(args)
        body = "\n".join([*head, "", *lines])
        text = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        heading = f"{KEPT_PREFIX[0]} current against {args.base}"
        atomic_write(args.output, lambda handle: handle.write(replace_section(text, heading, body)))


def describe_revision(args: argparse.Namespace) -> list[str]:
    """How the comparison was taken: command, date, commit, rounds."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return [
        f"`python benchmarks/compare_versions.py --base {args.base} --models {args.models} --rounds {args.rounds}`, "
        f"{time.strftime('%Y-%m-%d')}, working tree at {commit} (plus uncommitted changes, if any), "
        f"torch threads {args.threads}. Median over rounds of each tracker's step against the bare step; "
        "last column: median of the per-round ratios current / earlier (below 1: the current code is faster).",
    ]


if __name__ == "__main__":
    main()
