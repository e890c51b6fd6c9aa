"""Relative error of the covariance per product precision: float64, float32, and TF32 emulated on a CPU.

TensorFloat-32 products (``precision="tf32"`` on Ampere and later GPUs) round
each float32 input of the product to 10 mantissa bits and accumulate in
float32. On a CPU the rounding is emulated: the rows, centred as delve centres
them, are rounded to 10 mantissa bits (round to nearest on the bit pattern)
before a float32 product. The reference is numpy's two-pass float64
covariance of the same float32 data.

Run: ``python benchmarks/precision_error.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from delve import TorchCovarianceMatrix
from delve.engine.products import centre

OFFSETS = (0.0, 1e2, 1e4, 1e6)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) with its mantissa rounded to TensorFloat-32's 10 bits."""
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF  # add half of the dropped part, then drop the 13 low bits
    return rounded.view(torch.float32)


def emulated_tf32(batches: list[torch.Tensor]) -> np.ndarray:
    """The covariance from TF32 products: each batch centred (as delve does), rounded, multiplied, merged."""
    d = batches[0].shape[1]
    count, mean, comoment = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    for batch in batches:
        samples, batch_mean, residual = centre(batch, 0, torch.float32, torch.float64)
        rows = round_to_tf32(samples)
        product = (rows @ rows.t()).double()
        if residual is not None:
            product -= torch.outer(residual.view(-1).double(), residual.view(-1).double()) / batch.shape[0]
        n_b, n = batch.shape[0], count + batch.shape[0]
        delta = batch_mean - mean
        comoment += product + torch.outer(delta, delta) * (count * n_b / n)
        mean += delta * n_b / n
        count = n
    return (comoment / count).numpy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def data(offset: float, d: int, seed: int) -> list[torch.Tensor]:
    generator = np.random.default_rng(seed)
    mixing = generator.standard_normal((d, d)) / np.sqrt(d)
    rows = (generator.standard_normal((40 * 256, d)) @ mixing + offset).astype(np.float32)
    return [torch.from_numpy(part) for part in np.split(rows, 40)]


def measure(d: int, seeds: int) -> dict[float, dict[str, float]]:
    """Worst relative Frobenius error over ``seeds`` data sets, per offset and precision."""
    table: dict[float, dict[str, float]] = {}
    for offset in OFFSETS:
        worst = {"float64": 0.0, "float32": 0.0, "tf32 (emulated)": 0.0}
        for seed in range(seeds):
            batches = data(offset, d, seed)
            reference = np.cov(torch.cat(batches).double().numpy(), rowvar=False, bias=True)
            for precision in ("float64", "float32"):
                accumulator = TorchCovarianceMatrix(precision=precision)
                for batch in batches:
                    accumulator.update(batch)
                worst[precision] = max(worst[precision], relative_error(accumulator.fix().numpy(), reference))
            worst["tf32 (emulated)"] = max(worst["tf32 (emulated)"], relative_error(emulated_tf32(batches), reference))
        table[offset] = worst
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    table = measure(args.features, args.seeds)
    print(f"d = {args.features}, 40 batches of 256 float32 rows, worst of {args.seeds} data sets\n")
    print("| mean / std | float64 | float32 | tf32 (emulated) |")
    print("|---|---|---|---|")
    for offset, worst in table.items():
        cells = " | ".join(f"{worst[key]:.1e}" for key in ("float64", "float32", "tf32 (emulated)"))
        print(f"| {offset:g} | {cells} |")


if __name__ == "__main__":
    main()
