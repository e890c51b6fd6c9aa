"""``delve demo``: watch two CNNs of different width use their layers.

Two small convolutional networks with the same depth, one lean and one eight
times wider, learn scikit-learn's 8x8 handwritten digits (shipped inside
scikit-learn, so nothing is downloaded). A :class:`~delve.SaturationTracker`
watches every layer of each. The wide network reaches the same accuracy while
its layers use a much smaller share of their feature space: low saturation is
what an oversized layer looks like.

Run it with ``delve demo`` or ``python -m delve.demo``; scikit-learn comes with
``pip install delve[demo]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import nn

from .tracker import SaturationTracker

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_OUT_DIR",
    "DEMO_NETWORKS",
    "DemoNetwork",
    "MissingDemoDependencyError",
    "build_network",
    "load_digits_tensors",
    "run_demo",
    "main",
]

DEFAULT_OUT_DIR = "delve-demo"
DEFAULT_EPOCHS = 12
DEFAULT_SAVE_TO = ("csv", "plot", "tensorboard")
BATCH_SIZE = 64
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DemoNetwork:
    """The widths of one demo network.

    Attributes
    ----------
    name : str
        Used as the run's file prefix (``<out_dir>/<name>.csv``).
    channels : tuple of int
        Output channels of the three 3x3 convolutions.
    hidden : int
        Width of the hidden fully connected layer.
    """

    name: str
    channels: tuple[int, int, int]
    hidden: int


#: The two networks trained side by side: same depth, four times the width.
DEMO_NETWORKS = (
    DemoNetwork("lean", (8, 16, 16), 32),
    DemoNetwork("wide", (32, 64, 64), 128),
)


class MissingDemoDependencyError(ImportError):
    """scikit-learn, which provides the digits data set, is not installed."""


def load_digits_tensors(
    test_fraction: float = TEST_FRACTION, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(x_train, y_train, x_test, y_test)`` tensors.

    Images are ``(n, 1, 8, 8)`` float32 scaled to ``[0, 1]``; the split is a
    fixed random permutation.

    Raises
    ------
    MissingDemoDependencyError
        When scikit-learn is not installed.

    Examples
    --------
    >>> x_train, y_train, x_test, y_test = load_digits_tensors()
    >>> tuple(x_train.shape), tuple(x_test.shape), int(y_train.max())
    ((1438, 1, 8, 8), (359, 1, 8, 8), 9)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingDemoDependencyError(
            "the delve demo trains on scikit-learn's digits data set; install it with "
            "`pip install delve[demo]` (or `pip install -r requirements/demo.txt` in a clone)"
        ) from error
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def build_network(spec: DemoNetwork) -> nn.Sequential:
    """A three-convolution CNN for 8x8 single-channel images and 10 classes.

    Layers are named ``conv1``-``conv3``, ``fc1`` and ``fc2`` so that the
    tracker's output columns read naturally.

    Examples
    --------
    >>> model = build_network(DemoNetwork("tiny", (2, 3, 4), 5))
    >>> model(torch.zeros(7, 1, 8, 8)).shape
    torch.Size([7, 10])
    """
    c1, c2, c3 = spec.channels
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, c1, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(c1, c2, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),  # 8x8 -> 4x4
                ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
                ("relu3", nn.ReLU()),
                ("pool3", nn.MaxPool2d(2)),  # 4x4 -> 2x2
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(4 * c3, spec.hidden)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(spec.hidden, 10)),
            ]
        )
    )


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Feature size ``d`` of each tracked layer, by tracker layer name."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
    return widths


@dataclass
class _RunResult:
    spec: DemoNetwork
    widths: dict[str, int]
    saturation: dict[str, float]
    accuracy: float
    savefile: str


def _train_one(
    spec: DemoNetwork,
    data: tuple[torch.Tensor, ...],
    out_dir: str,
    epochs: int,
    save_to: Sequence[str],
    progress: object,
    seed: int,
) -> _RunResult:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = build_network(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    savefile = os.path.join(out_dir, spec.name)
    shuffler = torch.Generator().manual_seed(seed)
    values: dict[str, float] = {}
    accuracy = 0.0
    with SaturationTracker(savefile, save_to=list(save_to), modules=model, stats=["lsat", "idim"]) as tracker:
        for _ in range(epochs):
            model.train()
            total_loss = 0.0
            for batch in torch.randperm(len(y_train), generator=shuffler).split(BATCH_SIZE):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
            model.eval()
            with torch.no_grad():
                # Evaluation-mode forward passes feed the ``eval-`` statistics.
                predictions = model(x_test).argmax(dim=1)
            accuracy = float((predictions == y_test).float().mean())
            tracker.add_scalar("train-loss", total_loss / len(y_train))
            tracker.add_scalar("test-accuracy", accuracy)
            values = tracker.add_saturations()
            progress.set_postfix_str(f"{spec.name}: acc {accuracy:.3f}")  # type: ignore[attr-defined]
            progress.update(1)  # type: ignore[attr-defined]
    saturation = {
        layer: float(values.get(f"train-saturation_{layer}", float("nan"))) for layer in layer_widths(model)
    }
    return _RunResult(spec, layer_widths(model), saturation, accuracy, savefile)


def saturation_table(results: Sequence[_RunResult]) -> str:
    """Per-layer training saturation of each network, last epoch, as text."""
    layers = list(results[0].widths)
    header = ["layer"] + [f"{r.spec.name} sat. (k / d)" for r in results]
    rows = []
    for layer in layers:
        cells = [layer]
        for result in results:
            sat, width = result.saturation[layer], result.widths[layer]
            cells.append(f"{sat:5.2f} ({round(sat * width):>3d} / {width:<3d})")
        rows.append(cells)
    rows.append(["test accuracy"] + [f"{r.accuracy:6.1%}" for r in results])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def _mean_hidden_saturation(result: _RunResult) -> float:
    # The output layer's width is fixed by the 10 classes, so it says nothing about sizing.
    hidden = [value for layer, value in result.saturation.items() if layer != "fc2"]
    return sum(hidden) / len(hidden)


def _verdict(lean: _RunResult, wide: _RunResult) -> str:
    ratio = wide.widths["fc1"] / lean.widths["fc1"]
    return (
        f"The {wide.spec.name} network is {ratio:g}x wider. Its hidden layers hold 99% of their variance in "
        f"{_mean_hidden_saturation(wide):.0%} of their dimensions on average, against "
        f"{_mean_hidden_saturation(lean):.0%} for the {lean.spec.name} one:\nmost of its width is idle "
        "(low saturation), so the layers could be narrower."
    )


def _written_files(out_dir: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"csv": [], "png": [], "tensorboard": []}
    for root, _, files in os.walk(out_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.endswith(".csv"):
                found["csv"].append(path)
            elif name.endswith(".png"):
                found["png"].append(path)
            elif "tfevents" in name:
                found["tensorboard"].append(path)
    return found


def run_demo(
    out_dir: str = DEFAULT_OUT_DIR,
    epochs: int | None = None,
    *,
    save_to: Sequence[str] = DEFAULT_SAVE_TO,
    progress: bool = True,
    stream: TextIO | None = None,
    seed: int = 0,
) -> int:
    """Train the two demo networks with delve attached; the ``delve demo`` command.

    Parameters
    ----------
    out_dir : str
        Folder for the CSV files, plots and TensorBoard logs (created).
    epochs : int, optional
        Training epochs per network; ``None`` means :data:`DEFAULT_EPOCHS`.
    save_to : list of str
        Writer keys passed to both trackers.
    progress : bool
        Show a tqdm progress bar on standard error.
    stream : file, optional
        Where the summary is printed; standard output by default.
    seed : int
        Seed of the data split, the initial weights and the batch order.

    Returns
    -------
    int
        ``0`` on success, ``1`` when scikit-learn is missing, ``2`` for bad
        arguments; a message says why.
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
    from tqdm.auto import tqdm

    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    results = []
    with tqdm(
        total=epochs * len(DEMO_NETWORKS), desc="delve demo", unit="epoch", disable=not progress, file=sys.stderr
    ) as bar:
        for spec in DEMO_NETWORKS:
            results.append(_train_one(spec, data, out_dir, epochs, save_to, bar, seed))
    elapsed = time.perf_counter() - start

    n_train = len(data[1])
    lean, wide = results[0], results[-1]
    print(
        f"\nTrained two CNNs on scikit-learn's digits ({n_train} training images, {epochs} epochs, "
        f"{elapsed:.0f} s).\nTraining-mode saturation of every layer in the last epoch "
        "(k = dimensions holding 99% of the variance, d = layer width):\n",
        file=stream,
    )
    print(saturation_table(results), file=stream)
    print(f"\n{_verdict(lean, wide)}", file=stream)
    files = _written_files(out_dir)
    print("\nFiles written:", file=stream)
    for path in files["csv"]:
        print(f"  CSV:   {path}", file=stream)
    if files["png"]:
        folders = sorted({os.path.dirname(p) for p in files["png"]})
        print(f"  plots: {len(files['png'])} PNG files in {', '.join(folders)}", file=stream)
    if files["tensorboard"]:
        print(f"  TensorBoard logs: tensorboard --logdir {out_dir}", file=stream)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``python -m delve.demo``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m delve.demo", description="Train two CNNs on the digits data set with delve attached."
    )
    parser.add_argument("--out", default=DEFAULT_OUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs per network (default: {DEFAULT_EPOCHS})"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    return run_demo(out_dir=args.out, epochs=args.epochs, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
