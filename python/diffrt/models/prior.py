"""The DALL-E 2 prior (Ramesh et al. 2022, §2.1): a causal transformer that predicts the clean CLIP
image embedding from the caption, given the sequence
[text tokens, text embedding, timestep embedding, noised image embedding, learned query]; the
output at the query position is the prediction (x0 parameterisation: prediction_type "sample")."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping

import torch
from torch import nn

from .layers import TransformerBlock, timestep_embedding
from .serialization import SavableModel, check_config


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 128  # CLIP embedding size
    text_width: int = 128  # CLIP text token width
    max_length: int = 32
    width: int = 256
    layers: int = 6
    heads: int = 8

    def __post_init__(self):
        problems = check_config(self, {f.name: 1 for f in fields(self)})
        if problems:
            raise ValueError("invalid PriorConfig: " + "; ".join(problems))
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class DiffusionPrior(nn.Module, SavableModel):
    """Denoiser over CLIP image embeddings: ``prior(z_t, t, cond)`` with cond a dict of
    ``text_tokens`` (B, L, text_width), ``text_mask`` (B, L) and ``text_embed`` (B, embed_dim)."""

    config_class = PriorConfig
    prediction_type = "sample"

    def __init__(self, config: PriorConfig = PriorConfig()):
        super().__init__()
        self.config = c = config
        self.in_channels = self.out_channels = c.embed_dim
        self.text_in = nn.Linear(c.text_width, c.width)
        self.embed_in = nn.Linear(c.embed_dim, c.width)
        self.time_in = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.noised_in = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.position = nn.Parameter(torch.randn(c.max_length + 4, c.width) * 0.01)
        self.blocks = nn.ModuleList(TransformerBlock(c.width, c.heads, causal=True) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)

    @staticmethod
    def condition(text: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The prior's condition from the text encoder's output (``context``, ``context_mask``,
        ``pooled``): the caption's token states, their padding mask and its pooled embedding."""
        return {"text_tokens": text["context"], "text_mask": text["context_mask"], "text_embed": text["pooled"]}

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        tokens, mask, text_embed = cond["text_tokens"], cond["text_mask"], cond["text_embed"]
        b, n = tokens.shape[:2]
        c = self.config
        if n > c.max_length:
            raise ValueError(f"text_tokens has {n} tokens, more than max_length {c.max_length}")
        seq = torch.cat([
            self.text_in(tokens),
            self.embed_in(text_embed)[:, None],
            self.time_in(timestep_embedding(t, c.width).to(z_t.dtype))[:, None],
            self.noised_in(z_t)[:, None],
            self.query.expand(b, 1, -1),
        ], dim=1) + self.position[: n + 4]
        keep = torch.cat([mask, torch.ones(b, 4, dtype=torch.bool, device=mask.device)], dim=1)
        for block in self.blocks:
            seq = block(seq, keep)
        return self.out(self.norm(seq[:, -1]))
