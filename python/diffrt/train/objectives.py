"""Training objectives of each model kind, as ``loss_fn(model, batch, generator)`` for the loop.

Batches are dicts from diffrt.data: ``image`` (B, 3, H, W) in [−1, 1], ``mask`` (B, 1, H, W) with
1 = region to repaint, ``prompt`` (B strings).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.text_encoder import TextEncoder
from ..ops import PREDICTION_TYPES
from ..schedules import NoiseSchedule


def drop_prompts(prompts: Sequence[str], p: float, generator: torch.Generator) -> list:
    """Caption dropout for classifier-free guidance: each prompt becomes "" with probability p."""
    keep = torch.rand(len(prompts), generator=generator) >= p
    return [text if k else "" for text, k in zip(prompts, keep.tolist())]


def _noised(noise_schedule: NoiseSchedule, x0: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
    t = torch.randint(0, noise_schedule.num_train_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    return noise_schedule.add_noise(x0, noise, t.to(x0.device)), noise, t.to(x0.device)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model itself, under the loop's DistributedDataParallel wrapper (its conditioning methods)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class UNetObjective:
    """Denoising loss of the base text-to-image / inpainting UNet, the super-resolution UNet
    (``sr_factor`` > 1: the model also sees the image downsampled by that factor, noise-augmented
    to a random level below ``max_noise_level``) and the unCLIP decoder (``image_encoder``: the CLIP
    image embedding conditions the model; dropped with ``embed_dropout``).

    ``object_loss_weight`` λ weights the squared error of pixels inside the scene's objects λ times
    that of the background: loss = Σ w·(pred − target)² / Σ w, w = 1 + (λ − 1)·[pixel in an object].
    The per-pixel minimiser (the conditional mean of the target) is unchanged; only the capacity
    spent on objects — a few pixels each at 32 px, where the caption's colour and position live —
    grows. λ = 1 is the plain mean squared error."""

    def __init__(self, noise_schedule: NoiseSchedule, text_encoder: Optional[TextEncoder], *, prediction_type: str,
                 caption_dropout: float = 0.1, image_conditioning: bool = True, sr_factor: int = 1,
                 max_noise_level: int = 250, image_encoder: Optional[nn.Module] = None, embed_dropout: float = 0.1,
                 object_loss_weight: float = 1.0):
        if not object_loss_weight > 0:
            raise ValueError(f"object_loss_weight must be > 0, got {object_loss_weight}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if sr_factor > 1 and not 1 <= max_noise_level <= noise_schedule.num_train_timesteps:
            raise ValueError(f"max_noise_level must be in [1, {noise_schedule.num_train_timesteps}] (the noise "
                             f"schedule's timesteps), got {max_noise_level}")
        self.noise_schedule, self.text_encoder = noise_schedule, text_encoder
        self.prediction_type, self.caption_dropout = prediction_type, caption_dropout
        self.image_conditioning, self.sr_factor, self.max_noise_level = image_conditioning, sr_factor, max_noise_level
        self.image_encoder, self.embed_dropout = image_encoder, embed_dropout
        self.object_loss_weight = float(object_loss_weight)

    def conditions(self, model: nn.Module, batch: dict, generator: torch.Generator) -> dict:
        image = batch["image"]
        cond: dict = {}
        if self.text_encoder is not None:
            cond.update(self.text_encoder(drop_prompts(batch["prompt"], self.caption_dropout, generator)))
        if self.image_conditioning:
            cond.update(unwrapped(model).inpainting_condition(image, batch["mask"]))
        if self.sr_factor > 1:
            low = F.avg_pool2d(image, self.sr_factor)
            level = torch.randint(0, self.max_noise_level, (image.shape[0],), generator=generator)
            low_noise = torch.randn(low.shape, generator=generator).to(low)
            cond["low_res"] = self.noise_schedule.add_noise(low, low_noise, level)  # noise augmentation
            cond["noise_level"] = level
        if self.image_encoder is not None:
            with torch.no_grad():
                emb = self.image_encoder(image)
            keep = (torch.rand(image.shape[0], generator=generator) >= self.embed_dropout).to(emb)
            cond["image_embed"] = emb * keep[:, None]
        return cond

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        x0 = batch["image"]
        x_t, noise, t = _noised(self.noise_schedule, x0, generator)
        pred = model(x_t, t, self.conditions(model, batch, generator))
        target = self.noise_schedule.target(self.prediction_type, x0, noise, t)
        if self.object_loss_weight == 1.0:
            return F.mse_loss(pred.float(), target.float()), {}
        error = (pred.float() - target.float()) ** 2
        weight = 1 + (self.object_loss_weight - 1) * objects_union(batch["object_masks"], x0)
        loss = (weight * error).sum() / (weight.sum() * error.shape[1])
        return loss, {"mse": error.mean().item()}


def objects_union(object_masks: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 1 where a pixel belongs to any of its scene's objects (collated
    ``object_masks``: one (N, 1, H, W) bool tensor per sample, N ≥ 0)."""
    if len(object_masks) != like.shape[0]:
        raise ValueError(f"{len(object_masks)} object-mask sets for a batch of {like.shape[0]}")
    return torch.stack([m.any(dim=0) for m in object_masks]).to(like)


class CLIPObjective:
    """Symmetric InfoNCE between images and their captions (Radford et al. 2021)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        tokens = self.tokenizer(list(batch["prompt"]))
        logits, loss = model(tokens.ids, tokens.mask, batch["image"])
        accuracy = (logits.argmax(dim=1) == torch.arange(logits.shape[0])).float().mean().item()
        return loss, {"accuracy": accuracy}


class PriorObjective:
    """The DALL-E 2 prior's loss: predict the clean CLIP image embedding z from its noised version,
    given the caption's tokens and text embedding (dropped with ``caption_dropout``)."""

    def __init__(self, noise_schedule: NoiseSchedule, text_encoder: TextEncoder, image_encoder: nn.Module,
                 caption_dropout: float = 0.1):
        self.noise_schedule, self.text_encoder, self.image_encoder = noise_schedule, text_encoder, image_encoder
        self.caption_dropout = caption_dropout

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        text = self.text_encoder(drop_prompts(batch["prompt"], self.caption_dropout, generator))
        with torch.no_grad():
            z0 = self.image_encoder(batch["image"])
        z_t, _, t = _noised(self.noise_schedule, z0, generator)
        pred = model(z_t, t, unwrapped(model).condition(text))
        return F.mse_loss(pred.float(), z0.float()), {}
