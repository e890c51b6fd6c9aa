"""``delve demo``: watch two CNNs of different width use their layers.

Two small convolutional networks of the same depth, one lean and one four
times wider, learn scikit-learn's 8x8 handwritten digits (the data set ships
inside scikit-learn, so nothing is downloaded). A
:class:`~delve.SaturationTracker` watches every layer of each. The wide
network's layers keep 99% of their variance in a much smaller share of their
dimensions: low saturation is what an oversized layer looks like.

Everything goes to one folder (``delve-demo`` by default); a run of the demo
replaces the files an earlier one wrote there::

    delve-demo/lean.csv, delve-demo/wide.csv     one row per epoch
    delve-demo/lean.run.json, ...                what each run tracked (layers, widths)
    delve-demo/lean/, delve-demo/wide/           TensorBoard event files
    delve-demo/lean/plots/, delve-demo/wide/plots/   profiles and heatmaps
    delve-demo/saturation_comparison.png         both networks side by side

``delve summary delve-demo`` and ``delve plot delve-demo`` read both runs
back; ``delve plot`` redraws the same figures.

Run it with ``delve demo`` or ``python -m delve.demo`` (arguments: see
:mod:`delve.cli`); scikit-learn comes with ``pip install delve[demo]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..common.naming import value_name
from ..output.figures import new_figure, save_figure
from ..output.formats.record import read_record
from ..output.layout import csv_path, plot_dir, record_path, run_name, tensorboard_dir
from ..output.plotting import plot_results
from ..output.results import load_results
from ..statistics.registry import STATISTICS
from ..tracking.tracker import SaturationTracker
from .networks import (
    DEMO_NETWORKS,
    DemoNetwork,
    MissingDemoDependencyError,
    build_network,
    layer_widths,
    load_digits_tensors,
)

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_OUT_DIR",
    "DEMO_NETWORKS",
    "DemoNetwork",
    "MissingDemoDependencyError",
    "build_network",
    "layer_widths",
    "load_digits_tensors",
    "run_demo",
]

DEFAULT_OUT_DIR = "delve-demo"
DEFAULT_EPOCHS = 12
COMPARISON_FIGURE = "saturation_comparison.png"
PRIMARY_METRIC = "test-accuracy"
BATCH_SIZE = 64
SATURATION = STATISTICS["lsat"].name
#: Where the closing text sends the reader next.
ACTING_PAGE = "docs/acting.rst"


@dataclass
class DemoResult:
    """What one network of the demo ended with."""

    spec: DemoNetwork
    savefile: str
    widths: dict[str, int]
    accuracy: float = 0.0
    saturation: dict[str, float] = field(default_factory=dict)


def _train_one(
    spec: DemoNetwork,
    data: tuple[torch.Tensor, ...],
    out_dir: str,
    epochs: int,
    save_to: Sequence[str],
    progress: Any,
    seed: int,
) -> DemoResult:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = build_network(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(seed)
    result = DemoResult(spec, os.path.join(out_dir, spec.name), layer_widths(model))
    values: dict[str, Any] = {}
    with SaturationTracker(result.savefile, save_to=list(save_to), modules=model, stats=["lsat", "idim"]) as tracker:
        for _ in range(epochs):
            model.train()
            total_loss = torch.zeros(())
            for batch in torch.randperm(len(y_train), generator=shuffler).split(BATCH_SIZE):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                total_loss += loss.detach() * len(batch)
            model.eval()
            with torch.no_grad():
                # Evaluation-mode forward passes feed the ``eval-`` statistics.
                predictions = model(x_test).argmax(dim=1)
            result.accuracy = float((predictions == y_test).float().mean())
            tracker.add_scalar("train-loss", float(total_loss) / len(y_train))
            tracker.add_scalar(PRIMARY_METRIC, result.accuracy)
            values = tracker.add_saturations()
            progress.set_postfix_str(f"{spec.name} acc {result.accuracy:.3f}")
            progress.update(1)
    result.saturation = {layer: float(values[value_name("train", SATURATION, layer)]) for layer in result.widths}
    return result


def _draw_plots(results: Sequence[DemoResult], out_dir: str) -> list[Path]:
    """Each run's figures as the plot writer leaves them, and the comparison figure.

    Drawn once at the end from the run's files, exactly as ``delve plot``
    redraws them, rather than by the plot writer every epoch: the figures
    are the same, and redrawing them each epoch would take longer than the
    training.
    """
    written = []
    for result in results:
        savefile = result.savefile
        table = load_results(savefile)
        written += plot_results(table, plot_dir(savefile), run=run_name(savefile), record=read_record(savefile))
    written.append(comparison_figure(results, os.path.join(out_dir, COMPARISON_FIGURE)))
    return written


def _clear_earlier_run(savefile: str) -> None:
    """Remove what an earlier demo wrote under ``savefile``: the demo starts each run afresh.

    Only the demo's own files go (CSV, run record, TensorBoard event files,
    PNGs); anything else in the folder stays.
    """
    for path in (csv_path(savefile), record_path(savefile)):
        path.unlink(missing_ok=True)
    for folder, pattern in ((tensorboard_dir(savefile), "events.out.tfevents*"), (plot_dir(savefile), "*.png")):
        for path in folder.glob(pattern) if folder.is_dir() else ():
            path.unlink()


def comparison_figure(results: Sequence[DemoResult], path: str) -> Path:
    """Grouped bars: each layer's last-epoch training saturation, one colour per network."""
    layers = list(results[0].widths)
    figure = new_figure(7.0, 3.8, dpi=110)
    axes = figure.add_axes((0.1, 0.14, 0.62, 0.72))
    positions = np.arange(len(layers))
    height = 0.8 / len(results)
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for index, result in enumerate(results):
        offsets = positions - 0.4 + height * (index + 0.5)
        values = [result.saturation[layer] for layer in layers]
        label = f"{result.spec.name}: {'-'.join(map(str, result.spec.channels))}-{result.spec.hidden} units"
        label += f"\ntest accuracy {result.accuracy:.1%}"
        axes.barh(offsets, values, height=height * 0.92, color=colours[index % len(colours)], label=label)
        for y, layer, value in zip(offsets, layers, values):
            width = result.widths[layer]
            axes.text(value + 0.01, y, f"{round(value * width)}/{width}", va="center", fontsize=7)
    axes.set_yticks(positions, labels=layers)
    axes.invert_yaxis()  # forward order, top to bottom
    axes.set_xlim(0, 1.12)
    axes.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.set_xlabel("saturation = k / d (k: dimensions holding 99% of the variance)", fontsize=8)
    axes.set_title("Layer saturation on the digits data set, last training epoch", fontsize=10)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return save_figure(figure, path)


def saturation_table(results: Sequence[DemoResult]) -> str:
    """Each layer's last-epoch training saturation per network, and the accuracies, as text."""
    layers = list(results[0].widths)
    header = ["layer"] + [f"{result.spec.name}: saturation (k / d)" for result in results]
    rows = []
    for layer in layers:
        cells = [layer]
        for result in results:
            value, width = result.saturation[layer], result.widths[layer]
            cells.append(f"{value:4.2f} ({round(value * width):3d} / {width:3d})")
        rows.append(cells)
    footer = ["test accuracy"] + [f"{result.accuracy:.1%}" for result in results]
    widths = [max(len(row[i]) for row in [header, *rows, footer]) for i in range(len(header))]
    rule = "  ".join("-" * width for width in widths)

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    return "\n".join([line(header), rule, *map(line, rows), rule, line(footer)])


def _mean_hidden_saturation(result: DemoResult) -> float:
    # The output layer's width is fixed by the 10 classes, so it says nothing about sizing.
    hidden = [value for layer, value in result.saturation.items() if layer != "fc2"]
    return sum(hidden) / len(hidden)


def _verdict(lean: DemoResult, wide: DemoResult) -> str:
    ratio = wide.widths["fc1"] / lean.widths["fc1"]
    return (
        f"The {wide.spec.name} network is {ratio:g}x wider. Its hidden layers keep 99% of their variance in "
        f"{_mean_hidden_saturation(wide):.0%} of their dimensions on average,\nagainst "
        f"{_mean_hidden_saturation(lean):.0%} for the {lean.spec.name} one: most of its width is idle "
        "(low saturation), so those layers could be narrower."
    )


def _found_files(out_dir: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"csv": [], "png": [], "tensorboard": []}
    for root, _, files in os.walk(out_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.endswith(".csv"):
                found["csv"].append(path)
            elif name.endswith(".png"):
                found["png"].append(path)
            elif name.startswith("events.out.tfevents"):
                found["tensorboard"].append(path)
    return {kind: sorted(paths) for kind, paths in found.items()}


def run_demo(
    out_dir: str = DEFAULT_OUT_DIR,
    epochs: int | None = None,
    *,
    save_to: Sequence[str] = ("csv", "tensorboard"),
    plots: bool = True,
    progress: bool = True,
    stream: TextIO | None = None,
    seed: int = 0,
) -> int:
    """Train the two demo networks with delve attached: the ``delve demo`` command.

    Parameters
    ----------
    out_dir : str
        Folder for the CSV files, plots and TensorBoard logs (created).
    epochs : int, optional
        Training epochs per network; ``None`` means :data:`DEFAULT_EPOCHS`.
    save_to : list of str
        Writer keys of both trackers.
    plots : bool
        Draw the figures at the end.
    progress : bool
        Show a tqdm progress bar on standard error.
    stream : file, optional
        Where the summary goes; standard output by default.
    seed : int
        Seed of the data split, the initial weights and the batch order.

    Returns
    -------
    int
        ``0`` on success, ``1`` when scikit-learn is missing, ``2`` for an
        invalid ``epochs``; a message on standard error says why.
    """
    stream = sys.stdout if stream is None else stream
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        print(f"delve demo: epochs must be a positive integer, got {epochs!r}", file=sys.stderr)
        return 2
    try:
        data = load_digits_tensors(seed=seed)
    except MissingDemoDependencyError as error:
        print(f"delve demo: {error}", file=sys.stderr)
        return 1
    os.makedirs(out_dir, exist_ok=True)
    for spec in DEMO_NETWORKS:
        _clear_earlier_run(os.path.join(out_dir, spec.name))
    start = time.perf_counter()
    results = []
    threads = torch.get_num_threads()
    # The networks are tiny: one thread is about as fast as several on an idle machine, and on a
    # busy one several threads waiting for each other made the demo up to ten times slower.
    torch.set_num_threads(1)
    try:
        with tqdm(
            total=epochs * len(DEMO_NETWORKS), desc="delve demo", unit="epoch", disable=not progress, file=sys.stderr
        ) as bar:
            for spec in DEMO_NETWORKS:
                results.append(_train_one(spec, data, out_dir, epochs, save_to, bar, seed))
    finally:
        torch.set_num_threads(threads)
    if plots:
        _draw_plots(results, out_dir)
    elapsed = time.perf_counter() - start

    print(
        f"\nTrained two CNNs on scikit-learn's digits ({len(data[1])} training and {len(data[3])} test images, "
        f"{epochs} epoch{'s' if epochs > 1 else ''}, {elapsed:.0f} s).\nTraining-mode saturation of every layer "
        "in the last epoch (k: dimensions holding 99% of the variance, d: layer width):\n",
        file=stream,
    )
    print(saturation_table(results), file=stream)
    print(f"\n{_verdict(results[0], results[-1])}", file=stream)

    files = _found_files(out_dir)
    print(f"\nFiles in {out_dir}:", file=stream)
    for path in files["csv"]:
        print(f"  CSV (one row per epoch):  {path}", file=stream)
    comparison = os.path.join(out_dir, COMPARISON_FIGURE)
    if os.path.exists(comparison):
        print(f"  comparison figure:        {comparison}", file=stream)
    if files["png"]:
        folders = sorted({os.path.dirname(path) for path in files["png"]} - {out_dir})
        print(f"  plots per network:        {', '.join(folders)}", file=stream)
    if files["tensorboard"]:
        print(f"  TensorBoard logs:         tensorboard --logdir {out_dir}", file=stream)
        # Each point is an epoch: TensorBoard's default smoothing would bend the curves.
        print("                            then open http://localhost:6006/?smoothing=0", file=stream)
        if shutil.which("tensorboard") is None:
            print("                            (TensorBoard itself: pip install tensorboard)", file=stream)
    print(f"\nBoth runs again: delve summary {out_dir}   Figures redrawn: delve plot {out_dir}", file=stream)
    print(f"What each run suggests changing, and why: delve report {out_dir}", file=stream)
    print(
        "What to do with these numbers (when a layer is too wide, how many epochs to wait, how many rows are "
        f"enough):\n  'Acting on the numbers' in the documentation, {ACTING_PAGE}",
        file=stream,
    )
    return 0
