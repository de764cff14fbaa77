"""EditBench's automatic metrics — CLIPScore, CLIP-R-Precision, background PSNR, mask IoU — their
means per prompt type and design factor (`summarize`), and a run's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .design import BREAKDOWNS, MASK_SIZES, PROMPT_TYPES, EditBenchItem

METRICS = ("clip_score", "clip_r_precision", "attribute_accuracy", "colour_accuracy", "shape_accuracy",
           "count_accuracy", "background_psnr", "diffedit_iou")


@torch.no_grad()
def clip_score(clip, tokenizer, images: torch.Tensor, prompts: Sequence[str], w: float = 2.5) -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021): w·max(cos(E_image, E_text), 0) per image."""
    batch = tokenizer(list(prompts))
    text, _ = clip.encode_text(batch.ids, batch.mask)
    image = clip.encode_image(images)
    return w * (image * text).sum(-1).clamp_min(0)


@torch.no_grad()
def clip_r_precision_hits(clip, tokenizer, images: torch.Tensor, prompts: Sequence[str],
                          distractors: Sequence[Sequence[str]]) -> torch.Tensor:
    """Per image, 1 if its own prompt scores highest (ties go to it) among it and its distractors, else 0."""
    image = clip.encode_image(images)
    hits = []
    for i, (prompt, others) in enumerate(zip(prompts, distractors)):
        batch = tokenizer([prompt, *others])
        text, _ = clip.encode_text(batch.ids, batch.mask)
        hits.append(float((text @ image[i]).argmax().item() == 0))
    return torch.tensor(hits)


def clip_r_precision(clip, tokenizer, images: torch.Tensor, prompts: Sequence[str],
                     distractors: Sequence[Sequence[str]]) -> float:
    """CLIP-R-Precision (Park et al. 2021) with one true prompt (R = 1): the fraction of images whose
    own prompt scores highest among it and its distractor prompts."""
    return float(clip_r_precision_hits(clip, tokenizer, images, prompts, distractors).mean())


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


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Means of every metric over the per-(item, prompt type) records: per prompt type ("all" pools
    them), and per prompt type within each mask size, attribute, object category and scene."""
    def mean(rows) -> Dict[str, Optional[float]]:
        out = {}
        for m in METRICS:
            values = [r[m] for r in rows if r.get(m) is not None]
            out[m] = float(np.mean(values)) if values else None
        out["n"] = len(rows)
        return out

    types = [*PROMPT_TYPES, "all"]
    per_type = {p: [r for r in records if p == "all" or r["prompt_type"] == p] for p in types}
    summary: Dict[str, Any] = {"overall": {p: mean(rows) for p, rows in per_type.items()}}
    for key, values in BREAKDOWNS.items():
        summary[f"by_{key}"] = {p: {v: mean(chosen) for v in values if (chosen := [r for r in rows if r[key] == v])}
                                for p, rows in per_type.items()}
    return summary


@dataclass
class EditBenchResult:
    name: str
    config: Dict[str, Any]
    records: List[Dict[str, Any]]  # one per (item, prompt type)
    summary: Dict[str, Any]  # `summarize(records)`
    examples: List[Dict[str, Any]] = field(default_factory=list, repr=False)  # a few items' images, for the grid

    def as_dict(self) -> Dict[str, Any]:
        """Everything JSON can hold: config, summary and the per-item records."""
        return {"name": self.name, "config": self.config, **self.summary, "items": self.records}
