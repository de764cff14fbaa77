"""An EditBench-style benchmark on the procedural world, and its automatic metrics.

EditBench (Wang et al. 2023) pairs each image with a mask over an object and three prompts — Mask-
Simple ("a red circle"), Mask-Rich ("a large red striped circle") and Full (the whole scene) — and
reports results by mask size. Here the world supplies exact object masks and the ground truth of
every attribute, so next to CLIPScore and CLIP-R-Precision (with diffrt's CLIP) the evaluation can
check an attribute directly (the colour of the repainted object), background preservation outside
the mask, and the IoU of an estimated mask (DiffEdit) with the true one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch


from .data.world import COLOUR_RGB, render, sample_scene

MASK_SIZES = ("small", "medium", "large")
SMALL_BELOW, LARGE_FROM = 0.1, 0.3  # mask area fractions that split small / medium / large


@dataclass
class EditBenchItem:
    index: int
    image: torch.Tensor  # (3, H, W) in [−1, 1]
    mask: torch.Tensor  # (1, H, W), 1 = the target object's box (the region to repaint)
    object_mask: torch.Tensor  # (1, H, W) bool, the target object's exact pixels
    prompts: Dict[str, str]  # {"simple", "rich", "full"}
    mask_size: str  # small / medium / large
    labels: Dict[str, object]  # the target object's ground-truth attributes


def mask_size_class(mask: torch.Tensor) -> str:
    area = float(mask.float().mean())
    return "small" if area < SMALL_BELOW else "large" if area >= LARGE_FROM else "medium"


def editbench(n: int = 120, *, resolution: int = 64, seed: int = 1234) -> List[EditBenchItem]:
    """n image–mask–prompt triples, deterministic in (seed, index); the target is each scene's first object."""
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        scene = render(sample_scene(rng), resolution)
        target = scene.objects[0]
        x0, y0, x1, y1 = target.box
        mask = torch.zeros(1, resolution, resolution)
        mask[:, y0:y1, x0:x1] = 1
        items.append(EditBenchItem(
            index=i, image=torch.from_numpy(scene.image).float(), mask=mask,
            object_mask=torch.from_numpy(target.mask)[None],
            prompts={"simple": target.caption_simple, "rich": target.caption_rich, "full": scene.caption_full},
            mask_size=mask_size_class(mask), labels=target.spec.labels()))
    return items


# -- metrics -----------------------------------------------------------------------------------

@torch.no_grad()
def clip_score(clip, tokenizer, images: torch.Tensor, prompts: Sequence[str], w: float = 2.5) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021): w·max(cos(E_image, E_text), 0) per image."""
    batch = tokenizer(list(prompts))
    text, _ = clip.encode_text(batch.ids, batch.mask)
    image = clip.encode_image(images)
    return w * (image * text).sum(-1).clamp_min(0)


@torch.no_grad()
def clip_r_precision(clip, tokenizer, images: torch.Tensor, prompts: Sequence[str],
                     distractors: Sequence[Sequence[str]]) -> float:
    """Fraction of images whose own prompt scores highest among it and its distractor prompts."""
    image = clip.encode_image(images)
    hits = 0
    for i, (prompt, others) in enumerate(zip(prompts, distractors)):
        batch = tokenizer([prompt, *others])
        text, _ = clip.encode_text(batch.ids, batch.mask)
        hits += int((text @ image[i]).argmax().item() == 0)
    return hits / len(prompts)


def dominant_colour(image: torch.Tensor, region: torch.Tensor) -> str:
    """The named colour nearest (in RGB) to the mean colour of ``region`` (1, H, W) of ``image`` (3, H, W)."""
    pixels = ((image.float() + 1) * 127.5)[:, region[0].bool()]
    if pixels.numel() == 0:
        raise ValueError("region is empty")
    mean = pixels.mean(dim=1)
    names = list(COLOUR_RGB)
    table = torch.tensor([COLOUR_RGB[c] for c in names], dtype=torch.float32)
    return names[int((table - mean).square().sum(1).argmin())]


def colour_accuracy(images: torch.Tensor, regions: torch.Tensor, colours: Sequence[str]) -> float:
    """How often the repainted region's dominant colour is the colour the prompt asked for."""
    return float(np.mean([dominant_colour(im, r) == c for im, r, c in zip(images, regions, colours)]))


def background_psnr(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, cap: float = 100.0) -> torch.Tensor:
    """PSNR (dB, images in [−1, 1] → peak 2) over the pixels outside the mask, per image; ``cap`` for identical."""
    keep = (mask < 0.5).expand_as(original).float()
    mse = ((original - edited).square() * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)
    return torch.where(mse > 0, 10 * torch.log10(4.0 / mse.clamp_min(1e-30)), torch.full_like(mse, cap)).clamp(max=cap)


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of binary masks, per image (1 when both are empty)."""
    p, t = predicted.bool().flatten(1), target.bool().flatten(1)
    inter, union = (p & t).sum(1).float(), (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def by_mask_size(values: Sequence[float], items: Sequence[EditBenchItem]) -> Dict[str, float]:
    """Mean of a per-item metric for each mask size (EditBench's breakdown) and overall."""
    out = {}
    for size in MASK_SIZES:
        chosen = [v for v, it in zip(values, items) if it.mask_size == size]
        if chosen:
            out[size] = float(np.mean(chosen))
    out["all"] = float(np.mean(values))
    return out


__all__ = ["EditBenchItem", "MASK_SIZES", "background_psnr", "by_mask_size", "clip_r_precision", "clip_score",
           "colour_accuracy", "dominant_colour", "editbench", "mask_iou", "mask_size_class"]
