"""The benchmark's workloads: a model, its batches and its loss, by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from attention_models import GPTDecoder, ViTTiny
from models import EfficientNetB0, LSTMClassifier, ResNet18, TinyTransformer, mlp, vgg_cnn
from torch import nn
from torch.nn import functional as F

__all__ = ["Workload", "workloads", "image_batches", "MODEL_NAMES", "SECTION1_MODELS"]

GPT_VOCAB = 1000


def class_targets(batch: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """One class label per sample."""
    return torch.randint(0, classes, (batch.shape[0],), generator=generator)


def token_targets(batch: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """One next-token label per position: the language-model loss of a decoder."""
    return torch.randint(0, classes, tuple(batch.shape), generator=generator)


def token_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position of ``(batch, tokens, classes)`` logits (or plain ``(batch, classes)``)."""
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


@dataclass(frozen=True)
class Workload:
    """What one benchmark row trains.

    Attributes
    ----------
    name : str
        Key on the command line.
    description : str
        Shown in the tables; ``{batch}`` is replaced by the batch size.
    build : callable
        A fresh model, its parameters drawn from torch's global generator.
    sample : callable
        ``sample(generator, batch)``: one input batch.
    batch : int
        Samples per batch.
    classes : int
        Label range of the targets.
    targets : callable
        ``targets(batch, classes, generator)``: labels matching the model's output.
    rounds : int
        Alternating rounds of a full run, sized so the whole benchmark stays
        under about 15 minutes on 2 cores (``--rounds`` overrides it).
    warmup : int
        Untimed rounds before them. Models whose step takes seconds need
        fewer: one round already warms the allocator and the BLAS kernels.
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    sample: Callable[[torch.Generator, int], torch.Tensor]
    batch: int
    classes: int = 10
    targets: Callable[[torch.Tensor, int, torch.Generator], torch.Tensor] = class_targets
    rounds: int = 60
    warmup: int = 5

    @property
    def title(self) -> str:
        return self.description.format(batch=self.batch)

    def inputs(self, generator: torch.Generator) -> torch.Tensor:
        return self.sample(generator, self.batch)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return token_loss(output, target)


def image_batches(size: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    def sample(generator: torch.Generator, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, size, size, generator=generator)

    return sample


def _sequences(steps: int, features: int) -> Callable[[torch.Generator, int], torch.Tensor]:
    def sample(generator: torch.Generator, batch: int) -> torch.Tensor:
        return torch.randn(batch, steps, features, generator=generator)

    return sample


def _tokens(generator: torch.Generator, batch: int) -> torch.Tensor:
    return torch.randint(0, GPT_VOCAB, (batch, 128), generator=generator)


def _flat(generator: torch.Generator, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3072, generator=generator)


def workloads(mlp_width: int = 1024, mlp_batch: int = 256) -> dict[str, Workload]:
    """Every workload by name; the MLP's width and batch vary in the scaling sections."""
    return {
        "mlp": Workload(
            "mlp", f"MLP 3072-{mlp_width}-{mlp_width}-{mlp_width // 2}-10, batch {{batch}}",
            lambda: mlp(mlp_width), _flat, mlp_batch,
        ),
        "cnn": Workload("cnn", "VGG-style CNN, 3x32x32, batch {batch}", vgg_cnn, image_batches(32), 64),
        "lstm": Workload(
            "lstm", "LSTM classifier (2x256, 32 steps of 64 features), batch {batch}", LSTMClassifier,
            _sequences(32, 64), 64,
        ),
        "transformer": Workload(
            "transformer", "Transformer encoder (2 layers, d 128, 64 tokens), batch {batch}", TinyTransformer,
            _sequences(64, 32), 32,
        ),
        # Rounds below are sized from single-thread CPU-time runs of each model
        # (about 2.5 x the quiet 2-thread wall time): a round of all variants
        # takes about 18 s for the ResNet, 10 s for the ViT, 3.4 s for the
        # decoder and 2.6 s for the EfficientNet on 2 quiet cores.
        "resnet18": Workload(
            "resnet18", "ResNet-18 (CIFAR stem), 3x32x32, batch {batch}", ResNet18, image_batches(32), 128,
            rounds=8, warmup=1,
        ),
        "vit": Workload(
            "vit", "ViT-tiny (12x192, 3 heads, 4x4 patches), 3x32x32, batch {batch}", ViTTiny, image_batches(32), 64,
            rounds=10, warmup=1,
        ),
        "gpt": Workload(
            "gpt", "GPT decoder (4x256, MLP 1024, vocab 1000, tied head), 128 tokens, batch {batch}", GPTDecoder,
            _tokens, 16, classes=GPT_VOCAB, targets=token_targets, rounds=16, warmup=2,
        ),
        # Batch 32 at 64x64 is the same number of input pixels per batch as
        # the ResNet's 128 images of 32x32, so the two convolutional nets see
        # as much data per step, and it keeps a bare step near half a second
        # on 2 cores.
        "effnet": Workload(
            "effnet", "EfficientNet-B0-like, 3x64x64, batch {batch}", EfficientNetB0, image_batches(64), 32,
            rounds=16, warmup=2,
        ),
    }


# The models of the overhead sections, in report order.
MODEL_NAMES = ("mlp", "cnn", "lstm", "transformer", "resnet18", "vit", "gpt", "effnet")
# The models added for section 1 of the performance issue.
SECTION1_MODELS = ("resnet18", "vit", "gpt", "effnet")
