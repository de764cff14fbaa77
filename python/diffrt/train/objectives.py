"""Training objectives of each model kind, as ``loss_fn(model, batch, generator)`` for the loop.

Batches are dicts from diffrt.data: ``image`` (B, 3, H, W) in [−1, 1], ``mask`` (B, 1, H, W) with
1 = region to repaint, ``prompt`` (B strings).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.world import BACKGROUNDS, COLOURS, GLYPHS, SHAPES, SIZES, TEXTURES, spatial_phrase
from ..models.clip import CLIP
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


def _cell_phrases() -> Tuple[str, ...]:
    """The 9 cells of the captions' 3×3 grid, by their phrase."""
    return tuple(spatial_phrase([(x, y)]) for y in (1 / 6, 1 / 2, 5 / 6) for x in (1 / 6, 1 / 2, 5 / 6))


# What an image embedding is asked to tell (`CLIPWithAttributeHead`): which object colours, shapes
# or glyphs, sizes, textures and cells (objects with one instance) a scene holds, and its background's
# colours and kind.
ATTRIBUTE_LABELS: Tuple[str, ...] = (
    *(f"colour:{c}" for c in COLOURS), *(f"shape:{s}" for s in SHAPES + GLYPHS), *(f"size:{s}" for s in SIZES),
    *(f"texture:{t}" for t in TEXTURES), *(f"cell:{p}" for p in _cell_phrases()),
    *(f"background:{c}" for c in COLOURS), *(f"background_kind:{k}" for k in BACKGROUNDS))
_LABEL_INDEX = {label: i for i, label in enumerate(ATTRIBUTE_LABELS)}


def attribute_targets(labels: Sequence[Sequence[dict]], backgrounds: Sequence[dict]) -> torch.Tensor:
    """(B, len(ATTRIBUTE_LABELS)) multi-hot float targets of a collated batch's ``labels`` (per sample, one
    attribute dict per object) and ``background`` ({"kind", "colours"})."""
    if len(labels) != len(backgrounds):
        raise ValueError(f"{len(labels)} label lists for {len(backgrounds)} backgrounds")
    out = torch.zeros(len(labels), len(ATTRIBUTE_LABELS))
    for row, (objects, background) in enumerate(zip(labels, backgrounds)):
        names = [f"background_kind:{background['kind']}", *(f"background:{c}" for c in background["colours"])]
        for obj in objects:
            names += [f"colour:{obj['colour']}", f"shape:{obj['shape']}", f"size:{obj['size']}",
                      f"texture:{obj['texture']}"]
            if obj["count"] == 1:  # several instances' centroid is where none of them is
                names.append(f"cell:{obj['position']}")
        out[row, [_LABEL_INDEX[n] for n in names]] = 1.0
    return out


class CLIPWithAttributeHead(nn.Module):
    """A CLIP in training with a linear head on its normalised image embedding that predicts the
    scene's ATTRIBUTE_LABELS (multi-label): so the embedding keeps what unCLIP's decoder must redraw
    — object colours, shapes, cells — even where captions barely tell them apart. The head is
    training-only: ``clip`` is what a run saves."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip
        self.attribute_head = nn.Linear(clip.config.embed_dim, len(ATTRIBUTE_LABELS))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, images: torch.Tensor):
        """Contrastive logits and loss (as CLIP's forward) and the attribute logits (B, len(ATTRIBUTE_LABELS))."""
        text, _ = self.clip.encode_text(ids, mask)
        image = self.clip.encode_image(images)
        logits, loss = self.clip.contrastive(image, text)
        # unit-norm rows scaled to unit variance per coordinate: the head's logits start near ±1
        return logits, loss, self.attribute_head(image * image.shape[-1] ** 0.5)


class CLIPObjective:
    """Symmetric InfoNCE between images and their captions (Radford et al. 2021); with
    ``attribute_loss_weight`` λ > 0 (the model a `CLIPWithAttributeHead`) plus λ times the binary
    cross-entropy of the attribute head, averaged over labels and samples."""

    def __init__(self, tokenizer, attribute_loss_weight: float = 0.0):
        if not attribute_loss_weight >= 0:
            raise ValueError(f"attribute_loss_weight must be >= 0, got {attribute_loss_weight}")
        self.tokenizer, self.attribute_loss_weight = tokenizer, float(attribute_loss_weight)

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        tokens = self.tokenizer(list(batch["prompt"]))
        extra = {}
        if self.attribute_loss_weight == 0:
            logits, loss = model(tokens.ids, tokens.mask, batch["image"])
        else:
            logits, contrastive, predicted = model(tokens.ids, tokens.mask, batch["image"])
            target = attribute_targets(batch["labels"], batch["background"]).to(predicted)
            attribute = F.binary_cross_entropy_with_logits(predicted.float(), target.float())
            loss = contrastive + self.attribute_loss_weight * attribute
            found = ((predicted > 0) & (target > 0)).sum() / target.sum().clamp_min(1)
            extra = {"contrastive": contrastive.item(), "attribute_loss": attribute.item(),
                     "attribute_recall": found.item()}
        accuracy = (logits.argmax(dim=1) == torch.arange(logits.shape[0])).float().mean().item()
        return loss, {"accuracy": accuracy, **extra}


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
