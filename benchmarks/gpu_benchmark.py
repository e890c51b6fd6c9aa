"""Overhead of delve's SaturationTracker on a CUDA GPU: ResNet-18, batch 128, bf16 autocast.

Run (about 3 minutes on one H100)::

    python benchmarks/gpu_benchmark.py --output benchmarks/RESULTS_GPU.md

Same method as ``benchmark.py``: copies of one model train alternately in one
process (``bare``, ``exact`` = float64 products, ``fast`` =
``precision="float32"``), every step is timed between two
``torch.cuda.synchronize()`` calls, and the median of the per-round ratios
``t_tracked / t_bare`` is the overhead. ``fast-tf32`` is the fast mode with
``torch.backends.cuda.matmul.allow_tf32 = True`` (TF32 products, about 1e-3
relative error per product: much coarser than the fast mode's 1e-7 on CPUs).
Every Conv and Linear layer is tracked (channelwise), statistics lsat and
idim. Targets: fast <= 5 %, exact <= 15 %.

``--image-size 32`` (default) uses the CIFAR stem (3x3 conv, no max-pool);
``--image-size 224`` the ImageNet stem (7x7 stride-2 conv and max-pool).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import alternate, machine_description, ratio_stats, table

from delve import SaturationTracker
from delve.io import atomic_write


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (11.2 M parameters): 4 stages of 2 basic blocks, 64 to 512 channels."""

    def __init__(self, image_size: int = 32, classes: int = 1000) -> None:
        super().__init__()
        if image_size >= 128:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tf32: bool) -> Callable[[], None]:
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
        torch.cuda.synchronize()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_benchmark.py needs a CUDA device", file=sys.stderr)
        return 2

    device = torch.device("cuda")
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    base = ResNet18(args.image_size).to(device, memory_format=memory_format)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device).to(memory_format=memory_format)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    variants: dict[str, Callable[[], None]] = {"bare": make_step(copy.deepcopy(base), x, y, tf32=False)}
    trackers = []
    modes = (("exact", "float64", False), ("fast", "float32", False), ("fast-tf32", "float32", True))
    for name, precision, tf32 in modes:
        model = copy.deepcopy(base)
        trackers.append(
            SaturationTracker(f"gpu-{name}", modules=model, nosave=True, stats=["lsat", "idim"], precision=precision)
        )
        variants[name] = make_step(model, x, y, tf32=tf32)
    times = alternate(variants, args.rounds, args.warmup, clock=_cuda_clock)
    rows = []
    for name in ("exact", "fast", "fast-tf32"):
        med, q1, q3 = ratio_stats(times[name], times["bare"])
        rows.append([name, f"{100 * (med - 1):+.1f} %", f"[{100 * (q1 - 1):+.1f} %, {100 * (q3 - 1):+.1f} %]"])
    sync_start = _cuda_clock()
    values = trackers[0].add_saturations()
    add_saturations_s = _cuda_clock() - sync_start
    layers = len(trackers[0].layers)
    for tracker in trackers:
        tracker.close()

    lines = [
        "# delve tracking overhead on a GPU",
        "",
        "Reproduce with:",
        "",
        "```",
        "python benchmarks/gpu_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "```",
        "",
        *machine_description(torch.get_num_threads()),
        f"- GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}",
        f"- ResNet-18, {args.image_size}x{args.image_size} inputs, batch {args.batch}, bf16 autocast, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {layers} tracked layers; "
        f"bare step {1e3 * statistics.median(times['bare']):.2f} ms (median); "
        f"{args.rounds} rounds after {args.warmup} warm-up rounds",
        "",
        *table(["mode", "overhead (median)", "interquartile range"], rows),
        "",
        f"add_saturations (exact, {len(values)} values): {add_saturations_s:.3f} s",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        atomic_write(args.output, lambda handle: handle.write(text + "\n"))
    return 0


def _cuda_clock() -> float:
    import time

    torch.cuda.synchronize()
    return time.perf_counter()


if __name__ == "__main__":
    raise SystemExit(main())
