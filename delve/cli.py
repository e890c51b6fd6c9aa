"""The ``delve`` command (also ``python -m delve``).

Subcommands::

    delve demo [--out DIR] [--epochs N] [--no-progress]   train two CNNs and show their saturation
    delve plot RUN [--out DIR] [--epochs all]  redraw the figures from a run's CSV
    delve recompute NPY_DIR --threshold 0.95   saturation at another threshold, from saved covariances
    delve summary RUN [--stat lsat]            the last epoch's per-layer table
    delve report RUN                           the findings: what the numbers suggest changing

``RUN`` is the tracker's ``savefile`` (``runs/vgg``), its CSV
(``runs/vgg.csv``), or a folder holding several runs' CSVs (``delve-demo``),
each of which is then plotted or summarised. A missing or unreadable file is
reported in one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .output.formats.csv import write_csv
from .output.formats.record import read_record
from .output.layout import csv_path, find_runs, plot_dir, run_name
from .output.plotting import plot_results
from .output.report import format_report
from .output.results import load_results, recompute, wide
from .output.summary import format_summary
from .statistics.registry import STATISTICS, logged_name
from .verdicts.facts import report_of

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_USAGE = 2


class _InputError(Exception):
    """A problem with the user's files or arguments, reported as one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _epochs_choice(text: str) -> str | list[int]:
    if text in ("current", "last", "all"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'current', 'last', 'all' or epochs like 0,5,9, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``delve`` command.

    Examples
    --------
    >>> build_parser().parse_args(["recompute", "runs/vgg/npy", "--threshold", "0.95"]).threshold
    0.95
    """

    parser = argparse.ArgumentParser(
        prog="delve",
        description="Layer saturation of PyTorch models: run the demo, redraw plots, read results back.",
    )
    parser.add_argument("--version", action="version", version=f"delve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small CNN on the digits data set and show how saturated its layers are",
        description="Train small CNNs on scikit-learn's digits data set with a SaturationTracker on every "
        "layer; write CSV, plots and TensorBoard logs (needs: pip install 'delve[demo]').",
    )
    demo.add_argument("--out", default="delve-demo", metavar="DIR", help="output folder (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=None, metavar="N", help="training epochs")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(handler=_run_demo)

    plot = commands.add_parser(
        "plot",
        help="redraw the figures of a run from its CSV",
        description="Redraw the figures the plot writer draws during training (per-layer profiles, saturation "
        "heatmaps) from a run's files.",
    )
    plot.add_argument("run", metavar="RUN", help="the tracker's savefile (runs/vgg), its CSV, or a folder of runs")
    plot.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: RUN/plots)")
    plot.add_argument(
        "--epochs",
        type=_epochs_choice,
        default="current",
        metavar="WHICH",
        help="'current' (default): the last epoch's profiles, as the plot writer keeps them; or a profile file per "
        "epoch: 'last', 'all', or a list like 0,5,9",
    )
    plot.add_argument(
        "--primary-metric",
        metavar="NAME",
        default="auto",
        help="user scalar shown on each profile, e.g. test-accuracy (default: the run's accuracy, if it logged "
        "one; 'none' for none)",
    )
    plot.add_argument("--fontsize", type=float, default=11, help="base font size (default: %(default)s)")
    plot.set_defaults(handler=_run_plot)

    recompute = commands.add_parser(
        "recompute",
        help="saturation and intrinsic dimensionality at another threshold, from saved covariances",
        description="Recompute saturation and intrinsic dimensionality from the covariance matrices that the NPY "
        "writer saved (a run recorded with stats=[..., 'cov'] and save_to=[..., 'npy']); the model is not run.",
    )
    recompute.add_argument("npy_dir", metavar="NPY_DIR", help="the NPY writer's folder (RUN/npy)")
    recompute.add_argument(
        "--threshold", type=_threshold, default=0.99, help="fraction of variance, in (0, 1] (default: %(default)s)"
    )
    recompute.add_argument("--out", metavar="CSV", help="also write every epoch to this CSV file")
    recompute.add_argument("--epoch", type=int, default=None, help="epoch to print (default: the last)")
    recompute.set_defaults(handler=_run_recompute)

    summary = commands.add_parser(
        "summary",
        help="print the last epoch's per-layer table of a run",
        description="Print one epoch's per-layer statistics of a run (the last by default) and its user scalars.",
    )
    summary.add_argument("run", metavar="RUN", help="the tracker's savefile (runs/vgg), its CSV, or a folder of runs")
    summary.add_argument("--epoch", type=int, default=None, help="epoch to print (default: the last)")
    summary.add_argument(
        "--stat",
        action="append",
        metavar="NAME",
        help="only this statistic, by key or logged name, e.g. lsat or saturation (repeatable)",
    )
    summary.set_defaults(handler=_run_summary)

    report = commands.add_parser(
        "report",
        help="print a run's findings: the tail, idle width, dead layers, too few rows, with actions",
        description="Judge a run from its files: per layer the last epoch's saturation, k, rows, receptive field "
        "and probe accuracy, then the findings in words (what was seen, what to change). Exit code 0 also when "
        "there is nothing to change.",
    )
    report.add_argument("run", metavar="RUN", help="the tracker's savefile (runs/vgg), its CSV, or a folder of runs")
    report.set_defaults(handler=_run_report)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    # Imported when asked for: the demo pulls in its training code and tqdm.
    try:
        from . import demo
    except ModuleNotFoundError as error:
        raise _InputError(f"the demo is not available: {error}; install it with pip install 'delve[demo]'") from None
    options = {"progress": False} if args.no_progress else {}
    try:
        code = demo.run_demo(out_dir=args.out, epochs=args.epochs, **options)
    except ModuleNotFoundError as error:
        raise _InputError(f"the demo needs {error.name or error}; install it with pip install 'delve[demo]'") from None
    return int(code or 0)


def _runs(path: str) -> list[str]:
    """The runs ``path`` names: itself, or the runs whose CSVs lie in the folder it names."""
    path = path.rstrip("/\\") or path  # runs/vgg/ (a shell's completion) is the run runs/vgg
    if Path(path).is_dir() and not csv_path(path).is_file():
        runs = [str(run) for run in find_runs(path)]
        if not runs:
            raise _InputError(f"no delve results in the folder {path}: it holds no <run>.csv")
        return runs
    return [path]


def _run_plot(args: argparse.Namespace) -> int:
    runs = _runs(args.run)
    primary = None if args.primary_metric.lower() == "none" else args.primary_metric
    for run in runs:
        results = load_results(run)
        out = plot_dir(run)
        if args.out:
            out = Path(args.out) / run_name(run) if len(runs) > 1 else Path(args.out)
        if primary not in (None, "auto"):
            scalars = sorted(set(results.loc[results["layer"].isna() & results["mode"].isna(), "stat"]))
            if primary not in scalars:
                known = ", ".join(scalars) or "none"
                print(f"delve plot: warning: no scalar named {primary!r}; the run has: {known}", file=sys.stderr)
        existing = {path.name for path in out.glob("*.png")} if out.is_dir() else set()
        written = plot_results(
            results, out, args.epochs, primary, args.fontsize, run=run_name(run), record=read_record(run)
        )
        if not written:
            raise _InputError(f"{csv_path(run)} holds no per-layer values to plot")
        # Same names, same figures as the plot writer's; still, say what was replaced.
        replaced = len(existing & {path.name for path in written})
        print(f"wrote {len(written)} figure(s) to {out}" + (f", replacing {replaced} file(s)" if replaced else ""))
    return EXIT_OK


def _run_recompute(args: argparse.Namespace) -> int:
    results = recompute(args.npy_dir, args.threshold)
    if args.epoch is not None and args.epoch not in set(results["epoch"]):
        raise _InputError(f"epoch {args.epoch} is not in {args.npy_dir}")
    print(f"threshold {args.threshold}")
    print(format_summary(results, args.epoch))
    if args.out:
        write_csv(wide(results), args.out)
        print(f"wrote {args.out}")
    return EXIT_OK


def _check_stats(stats: list[str] | None, results: pd.DataFrame, run: str) -> None:
    """Each ``--stat`` must name, by key or logged name, a per-layer statistic of the run."""
    logged = list(dict.fromkeys(results.loc[results["layer"].notna(), "stat"]))
    for stat in stats or ():
        if logged_name(stat) not in logged:
            known = ", ".join(f"{STATISTICS[key].key} ({STATISTICS[key].name})" for key in STATISTICS)
            raise _InputError(
                f"{csv_path(run)} has no statistic {stat!r}; it holds: {', '.join(logged) or 'none'} "
                f"(give a key or a logged name: {known})"
            )


def _run_summary(args: argparse.Namespace) -> int:
    runs = _runs(args.run)
    for index, run in enumerate(runs):
        results = load_results(run)
        if results.empty:
            raise _InputError(f"{csv_path(run)} holds no values")
        if args.epoch is not None and args.epoch not in set(results["epoch"]):
            raise _InputError(f"epoch {args.epoch} is not in {csv_path(run)}")
        _check_stats(args.stat, results, run)
        if len(runs) > 1:
            if index:
                print()
            print(f"== {run_name(run)} ({csv_path(run)})")
        print(format_summary(results, args.epoch, args.stat, read_record(run)))
    return EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    runs = _runs(args.run)
    for index, run in enumerate(runs):
        results = load_results(run)
        per_layer = results[results["layer"].notna()] if not results.empty else results
        if per_layer.empty:
            raise _InputError(f"{csv_path(run)} holds no per-layer values to judge")
        if len(runs) > 1:
            if index:
                print()
            print(f"== {run_name(run)} ({csv_path(run)})")
        record = read_record(run)
        print(format_report(report_of(results, record), record, int(per_layer["epoch"].max())))
    return EXIT_OK


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``delve`` command; returns the exit code.

    Examples
    --------
    >>> main(["summary", "/nonexistent/run"])
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # Missing or corrupt files are reported in one line, without a traceback.
    # The demo's own errors are not input errors and keep their traceback.
    expected = (_InputError,) if args.command == "demo" else (_InputError, OSError, ValueError)
    try:
        return args.handler(args)
    except expected as error:
        print(f"delve {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
