"""What add_saturations costs on the many-layer models, split into computation and each writer.

For each model, one tracker per writer key (and one writing nothing) records
the same forward pass, then ``add_saturations`` is timed: the tracker that
writes nothing gives the computation (``fix()``, the eigendecompositions,
the statistics); each writer's time is its tracker's time minus that. A
writer that draws on a background thread (``finish_drawing``) is timed twice:
what ``add_saturations`` blocks for, and how long the drawing then takes
while training would go on. ``torch.linalg.eigvalsh`` on matrices of the
same sizes (one per layer and recorded mode, equal sizes batched, as delve
does) is the reference for the computation.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from harness import STATS
from report import Section, section, table
from workloads import workloads

from delve import SaturationTracker

__all__ = ["WRITERS", "run_writers"]

WRITERS = ("csv", "npy", "plot", "tensorboard")


def _eigvalsh_seconds(sizes: list[int], repeats: int) -> float:
    """Median time of batched ``eigvalsh`` on random symmetric matrices of the given sizes."""
    groups: dict[int, int] = defaultdict(int)
    for d in sizes:
        groups[d] += 1
    matrices = []
    for d, count in groups.items():
        a = torch.randn(count, d, d, dtype=torch.float64)
        matrices.append(a @ a.transpose(1, 2))
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in matrices:
            torch.linalg.eigvalsh(batch)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _finish(tracker: SaturationTracker) -> float:
    """Wait for background drawing; the seconds it took after add_saturations returned."""
    start = time.perf_counter()
    for writer in getattr(tracker.writer, "writers", [tracker.writer]):
        finish = getattr(writer, "finish_drawing", None)
        if finish is not None:
            finish()
    return time.perf_counter() - start


def _time_tracker(model: torch.nn.Module, batch: torch.Tensor, save_to: str | None, folder: Path, repeats: int):
    """Median seconds of add_saturations (blocking) and of the background drawing after it."""
    if save_to is None:
        tracker = SaturationTracker(str(folder / "none"), modules=model, nosave=True, stats=STATS)
    else:
        tracker = SaturationTracker(str(folder / save_to), save_to=save_to, modules=model, stats=STATS)
    blocking, background = [], []
    for _ in range(repeats + 1):  # the first epoch creates files and folders: not timed
        with torch.no_grad():
            model.train()
            model(batch)
            model.eval()
            model(batch)
        start = time.perf_counter()
        tracker.add_saturations()
        blocking.append(time.perf_counter() - start)
        background.append(_finish(tracker))
    sizes = [int(d) for d in tracker.cost()["features"]] * 2  # train and eval
    tracker.close()
    return statistics.median(blocking[1:]), statistics.median(background[1:]), sizes


def run_writers(report: list[Section], models: tuple[str, ...] = ("resnet18", "effnet"), repeats: int = 3) -> None:
    """Computation against each writer's time in add_saturations, per model (train and eval recorded)."""
    with section(report, "add_saturations: computation and writers") as sec:
        rows = []
        for name in models:
            work = workloads()[name]
            torch.manual_seed(0)
            model = work.build()
            batch = work.inputs(torch.Generator().manual_seed(1))
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compute, _, sizes = _time_tracker(model, batch, None, Path(tmp), repeats)
                reference = _eigvalsh_seconds(sizes, repeats)
                rows.append([name, "computation", f"{compute:.3f} s", "", f"{compute / reference:.2f}"])
                sec.data[f"{name}/computation"] = compute
                sec.data[f"{name}/eigvalsh"] = reference
                for key in WRITERS:
                    total, drawing, _ = _time_tracker(model, batch, key, Path(tmp), repeats)
                    writer = max(total - compute, 0.0)
                    rows.append([name, key, f"{writer:.3f} s", f"{drawing:.3f} s" if drawing > 1e-3 else "", ""])
                    sec.data[f"{name}/{key}"] = writer
                    sec.data[f"{name}/{key}/background"] = drawing
            rows.append([name, "eigvalsh of the same sizes", f"{reference:.3f} s", "", "1.00"])
        sec.lines = table(["model", "part", "blocks add_saturations", "drawn in the background", "x eigvalsh"], rows)
        sec.lines.append("")
        sec.lines.append(
            f"Statistics {', '.join(STATS)}, one batch recorded in train and in eval mode, median of {repeats} "
            "epochs after a first untimed one. A writer's time is its tracker's add_saturations minus the "
            "computation (a tracker that writes nothing)."
        )
