"""How far the budget moves saturation: exact and budget trackers on the same epoch of real data.

Each section-1 model (and the CNN) trains one epoch on scikit-learn's digits,
upsampled to the model's input (images: 8x8 bilinear to 32x32 or 64x64, three
channels; the decoder: each image's 64 pixel levels as tokens, twice). An
exact tracker and a ``max_overhead`` tracker hook the same model, so both see
the very same outputs; the table compares their saturation per layer and says
how many rows per feature the budget kept.

Run: ``python benchmarks/budget_accuracy.py --output benchmarks/BUDGET_ACCURACY.md --rst docs/budget_layers.inc``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads import GPT_VOCAB, token_loss, workloads

from delve import SaturationTracker
from delve.budget.cost_model import ROWS_PER_FEATURE
from delve.demo import load_digits_tensors

MODELS = ("cnn", "resnet18", "vit", "gpt", "effnet")
INPUT_SIDE = {"cnn": 32, "resnet18": 32, "vit": 32, "effnet": 64}
TOLERANCE = 0.01


def digits_batches(name: str, batch: int, split: str = "train") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of digits shaped for the model, with its labels (next tokens for the decoder)."""
    x_train, y_train, x_test, y_test = load_digits_tensors()
    if split == "test":
        x_train, y_train = x_test, y_test
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
    x_train, y_train = x_train[order], y_train[order]
    if name == "gpt":
        levels = (x_train.flatten(1) * 15).round().long()  # 16 grey levels: 64 tokens per image
        tokens = torch.cat([levels, levels + 16], dim=1) % GPT_VOCAB  # 128 tokens
        chunks = [tokens[i : i + batch] for i in range(0, len(tokens), batch)]
        return [(x, torch.roll(x, -1, dims=1)) for x in chunks if len(x) == batch]
    side = INPUT_SIDE[name]
    images = F.interpolate(x_train, size=(side, side), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    images = (images - images.mean()) / images.std()
    out = [(images[i : i + batch], y_train[i : i + batch]) for i in range(0, len(images), batch)]
    return [(x, y) for x, y in out if len(x) == batch]


def compare(name: str, max_overhead: float) -> tuple[list[tuple], float]:
    """Per layer and mode ``(layer, d, exact, budget, |difference|, rows per feature)`` and the run's seconds.

    One training epoch, then one evaluation pass over the held-out digits.
    """
    work = workloads()[name]
    torch.manual_seed(0)
    model = work.build()
    exact = SaturationTracker("exact", modules=model, nosave=True, stats=["lsat"])
    budget = SaturationTracker("budget", modules=model, nosave=True, stats=["lsat"], max_overhead=max_overhead)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    model.train()
    for x, y in digits_batches(name, work.batch):
        optimiser.zero_grad(set_to_none=True)
        output = model(x)
        loss = token_loss(output, y) if name == "gpt" else F.cross_entropy(output, y)
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        for x, _ in digits_batches(name, work.batch, "test"):
            model(x)
    seconds = time.perf_counter() - start
    table = budget.cost()
    features = dict(zip(table["layer"], table["features"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sparse-rows notices are what the table shows
        reference, sampled = exact.add_saturations(), budget.add_saturations()
    rows = []
    for mode in ("train", "eval"):
        for layer in budget.layer_names:
            key = f"{mode}-saturation_{layer}"
            if key not in reference or key not in sampled:
                continue
            kept = sampled[f"{mode}-rows_{layer}"]
            d = int(features[layer])
            difference = abs(reference[key] - sampled[key])
            rows.append((f"{layer} ({mode})", d, reference[key], sampled[key], difference, kept / d))
    exact.close()
    budget.close()
    return rows, seconds


COLUMNS = ("layer", "d", "exact", "budget", "difference", "rows per feature")


def cells(row: tuple) -> list[str]:
    """One layer's row of the tables, formatted (both renderings share it)."""
    layer, d, reference, sampled, difference, per_feature = row
    return [layer, str(d), f"{reference:.4f}", f"{sampled:.4f}", f"{difference:.4f}", f"{per_feature:.1f}"]


def render(results: dict[str, list[tuple]], max_overhead: float) -> str:
    lines = [
        f"# Saturation under `max_overhead={max_overhead}` against exact mode, one epoch of digits",
        "",
        "Both trackers hook the same model in the same epoch (training, then one pass over the held-out "
        f"digits); every layer, in both modes, should agree within {TOLERANCE}. Rows per feature: what the "
        f"budget kept (statistics rest on about {ROWS_PER_FEATURE} per feature or more).",
        "",
    ]
    for name, rows in results.items():
        worst = max((r[4] for r in rows), default=0.0)
        within = sum(r[4] <= TOLERANCE for r in rows)
        sparse = sum(r[5] < ROWS_PER_FEATURE for r in rows)
        verdict = "met" if worst <= TOLERANCE else "NOT met"
        lines += [
            f"## {name}",
            "",
            f"{within} of {len(rows)} layers and modes within {TOLERANCE}; largest difference {worst:.4f} "
            f"({verdict}); {sparse} kept fewer than {ROWS_PER_FEATURE} rows per feature.",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def render_rst(results: dict[str, list[tuple]], max_overhead: float) -> str:
    """The per-layer tables as reStructuredText, for ``docs/performance.rst`` to include."""
    lines = [
        f".. Written by benchmarks/budget_accuracy.py (max_overhead={max_overhead}); do not edit by hand.",
        "",
    ]
    for name, rows in results.items():
        lines += [
            f".. csv-table:: {name}: saturation after one epoch, exact and ``max_overhead={max_overhead}``",
            "   :header: " + ", ".join(COLUMNS),
            "   :widths: 40, 8, 12, 12, 14, 14",
            "",
        ]
        lines += ["   " + ", ".join(cells(row)) for row in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-overhead", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="the Markdown report")
    parser.add_argument("--rst", default=None, help="the per-layer tables as reStructuredText (for the docs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models.split(","):
        rows, seconds = compare(name, args.max_overhead)
        print(f"{name}: {len(rows)} layers, {seconds:.0f} s", flush=True)
        results[name] = rows
    text = render(results, args.max_overhead)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.rst:
        Path(args.rst).write_text(render_rst(results, args.max_overhead) + "\n")


if __name__ == "__main__":
    main()
