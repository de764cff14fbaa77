"""The CLIP text tower as the text encoder of the diffusion models: prompts → token states,
padding mask and pooled embedding (what the UNet's cross-attention and the prior consume)."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from .clip import CLIP
from .tokenizer import Tokenizer


class TextEncoder(nn.Module):
    def __init__(self, tokenizer: Tokenizer, clip: CLIP):
        super().__init__()
        if tokenizer.vocab_size != clip.config.vocab_size or tokenizer.max_length != clip.config.max_length:
            raise ValueError(f"tokenizer (vocab {tokenizer.vocab_size}, length {tokenizer.max_length}) does not fit "
                             f"CLIP (vocab {clip.config.vocab_size}, length {clip.config.max_length})")
        self.tokenizer, self.clip = tokenizer, clip

    @property
    def width(self) -> int:
        return self.clip.config.text_width

    @property
    def embed_dim(self) -> int:
        return self.clip.config.embed_dim

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        batch = self.tokenizer(list(prompts))
        device = next(self.clip.parameters()).device
        ids, mask = batch.ids.to(device), batch.mask.to(device)
        pooled, states = self.clip.encode_text(ids, mask)
        return {"context": states, "context_mask": mask, "pooled": pooled}
