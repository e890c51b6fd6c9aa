"""Sections of the report, their load, and the markdown tables they become."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from harness import NOT_SUPPORTED

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "Section", "section", "load_average", "table", "fmt_pct", "fmt_bytes", "overhead_header", "overhead_row",
    "OVERHEAD_HEADER", "mode_cell", "widest_layers", "machine_description", "KEPT_PREFIX", "kept_sections",
    "replace_section",
]

#: Sections of RESULTS.md written by other scripts (compare_versions.py, probe_cost.py); benchmark.py
#: carries them over.
KEPT_PREFIX = ("## versions:", "## probes:")


def kept_sections(text: str) -> str:
    """The sections of ``text`` whose heading starts with one of :data:`KEPT_PREFIX`, in order."""
    kept, keeping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keeping = line.startswith(KEPT_PREFIX)
        if keeping:
            kept.append(line)
    return "\n".join(kept)


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` replaced by ``body`` (appended when absent)."""
    lines = text.splitlines()
    out, skipping, done = [], False, False
    for line in lines:
        if line.startswith("## "):
            skipping = line == heading
            if skipping and not done:
                out.extend([heading, "", *body.splitlines(), ""])
                done = True
        if not skipping:
            out.append(line)
    if not done:
        out.extend(["", heading, "", *body.splitlines()])
    return "\n".join(out).rstrip() + "\n"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@dataclass
class Section:
    """A timed part of the report, with the load it ran under."""

    title: str
    load_before: float = float("nan")
    load_after: float = float("nan")
    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def loaded(self, threads: int) -> bool:
        return max(self.load_before, self.load_after) > threads + 0.5


@contextlib.contextmanager
def section(report: list[Section], title: str) -> Iterator[Section]:
    entry = Section(title, load_before=load_average())
    report.append(entry)
    print(f"== {title} (load {entry.load_before:.2f})", file=sys.stderr, flush=True)
    gc.collect()
    try:
        yield entry
    finally:
        entry.load_after = load_average()


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def fmt_pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f} %"


def fmt_bytes(size: float) -> str:
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} KiB"


def mode_cell(result: dict[str, Any], mode: str) -> str:
    """``+12.3 % [+10.1 %, +14.0 %]``, or why there is no figure."""
    r = result.get(mode)
    if r is None:
        return "-"
    if not r.get("supported", True):
        return NOT_SUPPORTED
    return f"{fmt_pct(r['ratio'])} [{fmt_pct(r['q1'])}, {fmt_pct(r['q3'])}]"


def overhead_header(modes: tuple[str, ...] = ("exact", "fast"), floor: bool = True) -> list[str]:
    header = ["workload", "bare step", *[f"{mode} overhead [IQR]" for mode in modes]]
    if floor:
        header += ["floor (f64 products / bare step)", "upper blocks only, f64 / f32"]
        header += [f"{mode} / floor" for mode in modes]
    return header


def overhead_row(result: dict[str, Any], floor: bool = True, modes: tuple[str, ...] = ("exact", "fast")) -> list[str]:
    cells = [result["workload"], f"{1e3 * result['bare_step_s']:.1f} ms"]
    cells += [mode_cell(result, mode) for mode in modes]
    if floor:
        f64 = result["floor64"]["ratio"]
        cells.append(f"{100 * f64:.1f} %")
        cells.append(f"{100 * result['upper64']['ratio']:.1f} % / {100 * result['upper32']['ratio']:.1f} %")
        for mode in modes:
            r = result.get(mode, {})
            cells.append(f"{(r['ratio'] - 1) / f64:.2f} x" if r.get("supported", True) and "ratio" in r else "n/a")
    return cells


OVERHEAD_HEADER = overhead_header()


def widest_layers(result: dict[str, Any], count: int = 3) -> str:
    """The ``count`` widest tracked layers, e.g. ``blocks-0-attn-qkv 576 (4160 rows)``."""
    layers = sorted(result["layer_shapes"], key=lambda layer: -layer["d"])[:count]
    return ", ".join(f"{layer['name']} {layer['d']} ({layer['rows']} rows)" for layer in layers)


def machine_description(threads: int) -> list[str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "delve"], capture_output=True, text=True
        ).stdout.strip()
        if dirty:
            commit += " (delve/ has uncommitted changes)"
    parallel = torch.__config__.parallel_info().splitlines()
    backend = next((line.strip() for line in parallel if "backend" in line.lower()), "")
    blas = "MKL" if torch.backends.mkl.is_available() else "other BLAS"
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical CPUs visible, torch threads: {threads} ({backend}, {blas})",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}",
        f"- delve commit: {commit}",
    ]
