"""A small CLIP (Radford et al. 2021): a causal text transformer and a ViT image encoder projected
into one normalised space, trained contrastively with a learnable temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import TransformerBlock
from .serialization import SavableModel, check_config


@dataclass(frozen=True)
class CLIPConfig:
    vocab_size: int = 1024
    max_length: int = 32
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    image_size: int = 32
    patch_size: int = 4
    image_channels: int = 3
    image_width: int = 128
    image_layers: int = 4
    image_heads: int = 4
    embed_dim: int = 128

    def __post_init__(self):
        problems = check_config(self, {f.name: 1 for f in fields(self)})
        if problems:
            raise ValueError("invalid CLIPConfig: " + "; ".join(problems))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads, name in ((self.text_width, self.text_heads, "text"), (self.image_width, self.image_heads, "image")):
            if width % heads:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")


class CLIP(nn.Module, SavableModel):
    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig = CLIPConfig()):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.text_position = nn.Parameter(torch.randn(c.max_length, c.text_width) * 0.01)
        self.text_blocks = nn.ModuleList(TransformerBlock(c.text_width, c.text_heads, causal=True) for _ in range(c.text_layers))
        self.text_norm = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)

        grid = c.image_size // c.patch_size
        self.patch_embedding = nn.Conv2d(c.image_channels, c.image_width, c.patch_size, stride=c.patch_size)
        self.class_token = nn.Parameter(torch.randn(c.image_width) * 0.02)
        self.image_position = nn.Parameter(torch.randn(grid * grid + 1, c.image_width) * 0.01)
        self.image_blocks = nn.ModuleList(TransformerBlock(c.image_width, c.image_heads) for _ in range(c.image_layers))
        self.image_norm = nn.LayerNorm(c.image_width)
        self.image_projection = nn.Linear(c.image_width, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids and padding mask → (normalised pooled embedding (B, E), token states (B, L, W)).
        The pooled state is the <eos> position (the last real token; attention is causal)."""
        if ids.shape[1] > self.config.max_length:
            raise ValueError(f"ids has {ids.shape[1]} tokens, more than max_length {self.config.max_length}")
        x = self.token_embedding(ids) + self.text_position[: ids.shape[1]]
        for block in self.text_blocks:
            x = block(x, mask)
        x = self.text_norm(x)
        eos = mask.long().sum(dim=1).clamp_min(1) - 1
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]
        return F.normalize(self.text_projection(pooled), dim=-1), x

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [−1, 1] → normalised embeddings (B, E)."""
        c = self.config
        if images.shape[1:] != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"images must have shape (B, {c.image_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(images.shape)}")
        x = self.patch_embedding(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], dim=1) + self.image_position
        for block in self.image_blocks:
            x = block(x)
        return F.normalize(self.image_projection(self.image_norm(x[:, 0])), dim=-1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Contrastive logits (image × text) and the symmetric InfoNCE loss over the batch."""
        text, _ = self.encode_text(ids, mask)
        return self.contrastive(self.encode_image(images), text)

    def contrastive(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits (image × text) of normalised embeddings, and the symmetric InfoNCE loss: row i's match is i."""
        logits = self.logit_scale.exp().clamp(max=100) * image @ text.t()
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return logits, loss
