"""A small transformer encoder classifying token sequences.

Each sequence holds 16 tokens from a vocabulary of 12; the label says whether
token 1 occurs more often than token 2. delve tracks the self-attention block
and both feed-forward Linear layers of every encoder layer, plus the
classification head. For attention and Linear layers on ``(batch, tokens,
features)`` outputs every token is one observation.

PyTorch's ``TransformerEncoderLayer`` has an inference fast path that computes
the whole layer in one fused kernel, bypassing the forward of its submodules
(and so their hooks). PyTorch leaves that path when a submodule carries a
forward hook, so the ``eval-`` statistics below are recorded; the script
checks that they are. PyTorch 2.1 does not check for hooks (nor has it
``torch.backends.mha.set_fastpath_enabled``); the path needs gradients off,
so there the script evaluates with them on.

Run::

    python examples/transformer_encoder.py --epochs 5 --out runs/transformer
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from delve import SaturationTracker
from delve.common.torch_features import hooks_leave_transformer_fast_path

VOCAB, LENGTH, D_MODEL = 12, 16, 32


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    labels = ((tokens == 1).sum(1) > (tokens == 2).sum(1)).long()
    return tokens, labels


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/transformer_encoder")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = make_data(2048)
    x_test, y_test = make_data(512, seed=1)
    model = TokenClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tracker = SaturationTracker(os.path.join(args.out, "transformer"), save_to="csv", modules=model)
    print("tracked layers:", ", ".join(tracker.layer_names))
    values: dict[str, float] = {}
    for _ in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        # Gradients stay on only where PyTorch would otherwise skip the hooks (2.1).
        with torch.set_grad_enabled(not hooks_leave_transformer_fast_path()):
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        tracker.add_scalar("test-accuracy", accuracy)
        values = tracker.add_saturations()
    tracker.close()

    missing = [name for name in tracker.layer_names if f"eval-saturation_{name}" not in values]
    if missing:
        raise SystemExit(f"no eval-mode statistics for {missing}: the fused fast path skipped the hooks")
    print(f"test accuracy {accuracy:.1%}")
    print(f"{'layer':<28}{'train':>7}{'eval':>7}")
    for name in tracker.layer_names:
        print(f"{name:<28}{values[f'train-saturation_{name}']:>7.2f}{values[f'eval-saturation_{name}']:>7.2f}")
    print(f"CSV file: {os.path.join(args.out, 'transformer.csv')}")


if __name__ == "__main__":
    main()
