"""Attention benchmark models: a ViT-tiny and a GPT-style decoder, defined here.

Attention is written with explicit ``nn.Linear`` layers (one fused ``qkv``
projection of width ``3 * width`` and one output ``proj``) rather than
``nn.MultiheadAttention``: that is how most vision and language transformers
are built, and it makes the tracker record the 3x wider ``qkv`` output, the
most expensive covariance of every block.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["SelfAttention", "PreNormBlock", "ViTTiny", "GPTDecoder"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` Linear and an output ``proj`` Linear."""

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        # (B, T, 3, H, W/H) -> three (B, H, T, W/H) tensors
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))


class PreNormBlock(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``, the GELU MLP as two Linears ``fc1``, ``fc2``."""

    def __init__(self, width: int, heads: int, hidden: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTTiny(nn.Module):
    """ViT-tiny on small images: 4x4 patches, a class token, 12 pre-norm blocks.

    Parameters
    ----------
    image_size, patch : int
        A 32x32 image in 4x4 patches gives 64 patch tokens, 65 with the class
        token.
    width, depth, heads, hidden : int
        ViT-Ti: 192 wide, 12 blocks, 3 heads, MLP 768.
    classes : int
        Outputs of the head, read from the class token.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch: int = 4,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        hidden: int = 768,
        classes: int = 10,
    ) -> None:
        super().__init__()
        tokens = (image_size // patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        self.blocks = nn.Sequential(*(PreNormBlock(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 64, width)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


class GPTDecoder(nn.Module):
    """GPT-style language model: learned token and position embeddings, causal pre-norm blocks.

    The language-model head is an ``nn.Linear`` whose weight is tied to the
    token embedding (as in GPT-2). It is still a Linear module, so the
    tracker records its ``vocab``-wide logits; tying only removes the
    duplicate parameter.

    Returns logits of shape ``(batch, tokens, vocab)``.
    """

    def __init__(
        self,
        vocab: int = 1000,
        context: int = 128,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.token_embed = nn.Embedding(vocab, width)
        self.pos_embed = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(PreNormBlock(width, heads, hidden, causal=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.token_embed.weight
        # GPT-2's scale: nn.Embedding's unit normal, read back through the
        # tied head, would start from logits of standard deviation 16.
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embed(tokens) + self.pos_embed(positions)
        return self.lm_head(self.norm(self.blocks(x)))
