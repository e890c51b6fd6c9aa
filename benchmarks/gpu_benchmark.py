"""Overhead of delve's SaturationTracker on a CUDA GPU: the section-1 models under bf16 autocast.

Run (about 3 minutes on one H100 or H200, 8 at most; one prepared script)::

    python benchmarks/gpu_benchmark.py --output benchmarks/RESULTS_GPU.md

Check on a machine without a GPU that it runs end to end (batches of 2 to 4, two rounds)::

    python benchmarks/gpu_benchmark.py --device cpu --smoke

Same method as ``benchmark.py``: copies of one model train alternately in one
process (``bare``, ``exact`` = float64 products, ``fast`` =
``precision="float32"``, ``budget`` = ``max_overhead=0.05`` where this delve
accepts it), every step is timed between two ``torch.cuda.synchronize()``
calls, and the median of the per-round ratios ``t_tracked / t_bare`` is the
overhead. ``fast-tf32`` (CUDA only) is the fast mode with
``torch.backends.cuda.matmul.allow_tf32 = True`` during its steps (TF32
products, about 1e-3 relative error per product: much coarser than the fast
mode's 1e-7). The floor is the float64 Gram products of every tracked layer's
rows on the device. Every Conv and Linear layer is tracked (channelwise),
statistics lsat and idim. Targets: fast <= 5 %, exact <= 15 %.

The models are those of ``benchmark.py``: ResNet-18 (CIFAR stem, batch 128),
ViT-tiny (batch 64), the GPT-style decoder (batch 16) and the
EfficientNet-B0-like stack at 64x64 (batch 32). ``--image-size 224`` gives the
ResNet its ImageNet stem (7x7 stride-2 convolution and max-pool) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Clock, measure_overhead
from model_sections import model_lines, summary_section
from models import ResNet18
from report import Section, machine_description
from workloads import SECTION1_MODELS, Workload, image_batches, workloads

from delve.common.files import atomic_write

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def cuda_clock() -> float:
    """Wall time after every queued kernel has finished."""
    torch.cuda.synchronize()
    return time.perf_counter()


def gpu_workloads(args: argparse.Namespace) -> list[Workload]:
    """The selected workloads with this run's batch, image size and memory format."""
    chosen = []
    table = workloads()
    for name in args.models:
        work = table[name]
        if name == "resnet18" and args.image_size != 32:
            size = args.image_size
            work = dataclasses.replace(
                work, description=f"ResNet-18, 3x{size}x{size}, batch {{batch}}",
                build=lambda size=size: ResNet18(size), sample=image_batches(size),
            )
        if args.batch is not None:
            work = dataclasses.replace(work, batch=args.batch)
        elif args.smoke:
            # bf16 convolutions on a CPU without native bf16 run many times slower than float32.
            work = dataclasses.replace(work, batch=max(2, work.batch // 32))
        if args.channels_last and name in ("resnet18", "effnet"):
            work = _channels_last(work)
        chosen.append(work)
    return chosen


def _channels_last(work: Workload) -> Workload:
    build, sample = work.build, work.sample

    def build_cl() -> torch.nn.Module:
        return build().to(memory_format=torch.channels_last)

    def sample_cl(generator: torch.Generator, batch: int) -> torch.Tensor:
        return sample(generator, batch).contiguous(memory_format=torch.channels_last)

    return dataclasses.replace(work, description=work.description + ", channels_last", build=build_cl, sample=sample_cl)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check that the script runs)")
    parser.add_argument(
        "--models", type=lambda value: [m.strip() for m in value.split(",") if m.strip()],
        default=list(SECTION1_MODELS), help=f"comma-separated, from {','.join(workloads())}",
    )
    parser.add_argument("--batch", type=int, default=None, help="override every model's batch size")
    parser.add_argument("--image-size", type=int, default=32, help="ResNet-18 input size (>= 128: ImageNet stem)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per model (default 100)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds per model (default 10)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="bf16", help="autocast dtype (default bf16)")
    parser.add_argument("--channels-last", action="store_true", help="conv models and inputs in channels_last")
    parser.add_argument("--saturation-repeats", type=int, default=None, help="add_saturations calls timed (default 3)")
    parser.add_argument("--smoke", action="store_true", help="2 rounds, no warm-up, batches / 32: checks that it runs")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--json", type=Path, default=None, help="also dump the raw figures as JSON")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in workloads()]
    if unknown:
        parser.error(f"unknown models {unknown}")
    if args.rounds is None:
        args.rounds = 2 if args.smoke else 100
    if args.warmup is None:
        args.warmup = 0 if args.smoke else 10
    if args.saturation_repeats is None:
        args.saturation_repeats = 1 if args.smoke else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_benchmark.py needs a CUDA device (or --device cpu --smoke for a check)", file=sys.stderr)
        return 2
    clock: Clock = cuda_clock if device.type == "cuda" else time.perf_counter
    # TF32 changes only CUDA products: on a CPU it would repeat the fast mode.
    modes = ("exact", "fast", "budget", "fast-tf32") if device.type == "cuda" else ("exact", "fast", "budget")
    amp_dtype = AMP_DTYPES[args.amp]

    started = time.perf_counter()
    sections: list[Section] = []
    for work in gpu_workloads(args):
        print(f"== {work.name} ({work.title})", file=sys.stderr, flush=True)
        result = measure_overhead(
            work, args.rounds, args.warmup, clock, modes=modes, saturation_repeats=args.saturation_repeats,
            device=device, amp_dtype=amp_dtype,
        )
        sec = Section(f"overhead: {work.name}", data=result)
        sec.lines = model_lines(result, modes, args.saturation_repeats)
        sections.append(sec)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    text = render(sections, modes, args, device, argv, time.perf_counter() - started)
    print(text)
    if args.output:
        atomic_write(args.output, lambda handle: handle.write(text + "\n"))
    if args.json:
        dump = json.dumps([vars(s) for s in sections], indent=1, default=str)
        atomic_write(args.json, lambda handle: handle.write(dump))
    return 0


def render(
    sections: list[Section],
    modes: tuple[str, ...],
    args: argparse.Namespace,
    device: torch.device,
    argv: list[str] | None,
    elapsed: float,
) -> str:
    gpu = (
        f"- GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
        if device.type == "cuda" else f"- device: {device} (a check run, not a GPU measurement)"
    )
    lines: list[str] = [
        "# delve tracking overhead on a GPU",
        "",
        "Reproduce with:",
        "",
        "```",
        "python benchmarks/gpu_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "```",
        "",
        *machine_description(torch.get_num_threads()),
        gpu,
        f"- autocast: {args.amp}; {args.rounds} rounds after {args.warmup} warm-up rounds per model; "
        f"every step timed between two device synchronisations",
        "",
    ]
    shown = [summary_section(sections, modes), *sections] if len(sections) > 1 else sections
    for sec in shown:
        lines += [f"## {sec.title}", "", *sec.lines, ""]
    lines.append(f"The whole run took {elapsed / 60:.1f} minutes.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
