"""Under bf16 autocast, what the input route tracks against the half-precision outputs the layer returned.

On the input route a layer's covariance is ``W S_x W^T`` from its
full-precision input and weights: the covariance of the affine map, not of
the bf16 outputs autocast produced (those carry bf16 rounding, about 3
significant digits). This script trains a model for a few steps of digits
under ``torch.autocast("cpu", dtype=torch.bfloat16)``, keeps every tracked
layer's bf16 outputs, and compares per layer: the relative Frobenius
difference between the tracked covariance and numpy's covariance of those
outputs, and the saturation each gives (99 % of the variance, as the
tracker's default).

Run: ``python benchmarks/autocast_difference.py --models vit,gpt``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from budget_accuracy import digits_batches
from workloads import token_loss, workloads

from delve import SaturationTracker


def saturation(covariance: np.ndarray, threshold: float = 0.99) -> float:
    """``k / d``: the fewest eigen-directions holding ``threshold`` of the variance."""
    values = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0, None)
    share = np.cumsum(values) / values.sum()
    return float(np.searchsorted(share, threshold) + 1) / len(values)


def measure(name: str, steps: int) -> list[tuple[str, str, float, float, float]]:
    """Per tracked layer: ``(layer, route, relative difference, saturation tracked, saturation of bf16 outputs)``."""
    work = workloads()[name]
    torch.manual_seed(0)
    model = work.build()
    tracker = SaturationTracker("autocast", modules=model, nosave=True, stats=["cov", "lsat"])
    outputs: dict[str, list[torch.Tensor]] = {layer: [] for layer in tracker.layer_names}
    modules = dict(model.named_modules())
    handles = []
    for layer in tracker.layer_names:
        module = modules[layer.replace("-", ".")]
        handles.append(
            module.register_forward_hook(lambda m, a, out, layer=layer: outputs[layer].append(out.detach().float()))
        )
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step, (x, y) in enumerate(digits_batches(name, work.batch)):
        if step == steps:
            break
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(x)
            loss = token_loss(output, y) if name == "gpt" else F.cross_entropy(output, y)
        loss.backward()
        optimiser.step()
    for handle in handles:
        handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = tracker.add_saturations()
    routes = dict(zip(tracker.cost()["layer"], tracker.cost()["route"]))
    tracker.close()
    results = []
    for layer, kept in outputs.items():
        # A convolution's channels are its features (every position a row), as the tracker reads them.
        flat = [(o.movedim(1, -1) if o.ndim == 4 else o) for o in kept]
        rows = torch.cat([o.reshape(-1, o.shape[-1]) for o in flat]).double().numpy()
        reference = np.cov(rows, rowvar=False, bias=True)
        tracked = values[f"train-covariance-matrix_{layer}"]
        difference = np.linalg.norm(tracked - reference) / np.linalg.norm(reference)
        results.append((layer, routes[layer], difference, values[f"train-saturation_{layer}"], saturation(reference)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit,gpt")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        rows = measure(name, args.steps)
        print(f"\n{name}: {args.steps} steps of digits under bf16 autocast\n")
        print("| layer | route | relative difference | saturation tracked | saturation of bf16 outputs |")
        print("|---|---|---|---|---|")
        for layer, route, difference, tracked, half in rows:
            print(f"| {layer} | {route} | {difference:.2e} | {tracked:.4f} | {half:.4f} |")
        on_input = [r for r in rows if r[1] == "input"]
        on_output = [r for r in rows if r[1] != "input"]
        for label, group in (("input route", on_input), ("output route", on_output)):
            if group:
                print(
                    f"\n{label}: relative difference median {np.median([r[2] for r in group]):.2e}, "
                    f"max {max(r[2] for r in group):.2e}; largest saturation difference "
                    f"{max(abs(r[3] - r[4]) for r in group):.4f}"
                )


if __name__ == "__main__":
    main()
