"""Running models on EditBench: inpaint every item with each prompt type, score the edits
(`run_editbench`), and several models on the same items with the same noise (`compare_editbench`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.world import check_resolution
from ..models.tokenizer import TruncationWarning
from ..models.bundle import Bundle
from ..models.unet import UNet
from ..pipelines import DiffEditPipeline, ImagenEditorPipeline
from ..schedules import NoiseSchedule
from ._shared import check_positive, seeded_generator
from .attributes import SILHOUETTE_THRESHOLD, attribute_checks
from .design import (ATTRIBUTES, DEFAULT_ITEMS, DEFAULT_SEED, LARGE_FROM, MASK_SIZES, PROMPT_TYPES, SMALL_BELOW,
                     EditBenchItem)
from .items import editbench
from .metrics import EditBenchResult, background_psnr, clip_r_precision_hits, clip_score, mask_iou, summarize
from .report import write_comparison


def _text_to_image_encoder(unet, text_encoder) -> Callable[[List[str]], dict]:
    """The text condition of an image-conditioned UNet used as text-to-image (whole image masked),
    as DiffEdit needs it (the same as `Bundle.text_to_image_condition`, for any UNet)."""
    def encode(prompts):
        return {**text_encoder(list(prompts)), **unet.full_mask_condition(len(prompts))}
    return encode


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side:
        return x
    return F.interpolate(x.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def _resize_mask(mask: torch.Tensor, side: int) -> torch.Tensor:
    if mask.shape[-1] == side:
        return mask.float()
    if side > mask.shape[-1]:
        return F.interpolate(mask.float(), size=(side, side), mode="nearest")
    return (F.interpolate(mask.float(), size=(side, side), mode="area") > 0).float()  # any covered pixel repaints


def _example_indices(items: Sequence[EditBenchItem], count: int) -> List[int]:
    """Up to ``count`` items for the example grid: one per attribute first, mask sizes rotating."""
    chosen: List[int] = []
    for k, attribute in enumerate(ATTRIBUTES * 3):
        want = MASK_SIZES[k % 3]
        pool = [i for i, it in enumerate(items) if it.attribute == attribute and i not in chosen]
        pick = next((i for i in pool if items[i].mask_size == want), pool[0] if pool else None)
        if pick is not None and len(chosen) < count:
            chosen.append(pick)
    return chosen


@torch.no_grad()
def run_editbench(bundle, *, unet=None, noise_schedule=None, text_encoder=None, name: str = "model",
                  items: Optional[Sequence[EditBenchItem]] = None, n_items: int = DEFAULT_ITEMS,
                  bench_seed: int = DEFAULT_SEED, seed: int = 0, steps: int = 25, guidance=5.0,
                  dynamic_threshold: Optional[float] = None, resolution: Optional[int] = None,
                  use_sr: bool = False, diffedit_n: int = 10,
                  diffedit_strength: float = 0.5, diffedit_normalise: str = "mean", diffedit_smooth: int = 0,
                  diffedit_threshold: float = 0.5, batch_size: int = 16, examples: int = 6,
                  progress: bool = True) -> EditBenchResult:
    """Run the benchmark: inpaint every item with each prompt type and score the results.

    ``bundle`` (a :class:`diffrt.models.bundle.Bundle`) gives the evaluator — CLIP for CLIPScore and
    CLIP-R-Precision — and, unless overridden, the model: its base UNet (``unet``), noise schedule
    and text encoder. The base model inpaints at its own resolution (``use_sr`` runs the cascade's
    super-resolution stage too); the raw output is scored, not a composite, so that background
    PSNR measures what the model kept. DiffEdit's mask comes from the same base model used as
    text-to-image (source = the source object's prompt, target = the edited one, same prompt type),
    from ``diffedit_n`` noise draws at ``diffedit_strength`` with `DiffEditPipeline.generate_mask`'s
    ``normalise``, ``smooth`` and ``threshold`` (the paper's by default); ``diffedit_n = 0`` skips it.
    Items are rendered at ``resolution`` (default: the output side) and resized to the model's input
    side when it differs.
    """
    steps = check_positive("steps", steps)
    batch_size = check_positive("batch_size", batch_size)
    diffedit_n = check_positive("diffedit_n", diffedit_n, allow_zero=True)
    if unet is None:
        unet = bundle.unet("base")
        noise_schedule = noise_schedule or bundle.noise_schedule("base")
    if noise_schedule is None:
        raise ValueError("a UNet given without its noise_schedule (NoiseSchedule.from_config(diffusion.json))")
    if not getattr(getattr(unet, "config", None), "cond_image", False):
        raise ValueError("EditBench needs an inpainting UNet (cond_image = true), such as a bundle's base model")
    text_encoder = text_encoder or bundle.text_encoder
    clip, tokenizer = bundle.clip, bundle.text_encoder.tokenizer
    sr = bundle.unet("sr") if use_sr else None
    pipe = ImagenEditorPipeline(unet, noise_schedule, text_encoder, super_resolution=sr,
                                sr_noise_schedule=bundle.noise_schedule("sr") if use_sr else None,
                                num_steps=steps, sr_steps=max(1, steps // 2))
    last = sr or unet
    in_side = last.config.cond_side
    out_side = last.config.image_size
    resolution = check_resolution(resolution if resolution is not None else out_side)
    if items is None:
        items = editbench(check_positive("n_items", n_items), resolution=resolution, seed=bench_seed)
    items = list(items)
    if not items:
        raise ValueError("items must not be empty")
    if any(it.image.shape[-1] != resolution for it in items):
        raise ValueError(f"items must be rendered at resolution {resolution}")
    diffedit = (DiffEditPipeline(unet, noise_schedule, _text_to_image_encoder(unet, text_encoder), num_steps=steps)
                if diffedit_n else None)
    clip_side = clip.config.image_size
    keep = set(_example_indices(items, examples))
    example_images: Dict[int, Dict[str, torch.Tensor]] = {i: {} for i in sorted(keep)}
    records: List[Dict[str, Any]] = []
    model_tokenizer = getattr(text_encoder, "tokenizer", tokenizer)
    room = model_tokenizer.max_length - 2  # <bos> and <eos>
    truncated = sum(len(model_tokenizer.encode(it.prompts[p])) > room for it in items for p in PROMPT_TYPES)

    bar = tqdm(total=len(items) * len(PROMPT_TYPES), desc=f"EditBench {name}", disable=not progress, unit="edit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted in the config, not printed per batch
        for k, prompt_type in enumerate(PROMPT_TYPES):
            for start in range(0, len(items), batch_size):
                batch = items[start: start + batch_size]
                prompts = [it.prompts[prompt_type] for it in batch]
                images = torch.stack([it.image for it in batch])
                masks = torch.stack([it.mask for it in batch])
                out = pipe(prompts, _resize(images, in_side), _resize_mask(masks, in_side), guidance=guidance,
                           dynamic_threshold=dynamic_threshold, composite=False,
                           generator=seeded_generator(seed, k, start), output_type="pt", progress=False)
                edited = _resize(out.images.float().cpu(), resolution).clamp(-1, 1)
                scores = clip_score(clip, tokenizer, _resize(edited, clip_side), prompts)
                hits = clip_r_precision_hits(clip, tokenizer, _resize(edited, clip_side), prompts,
                                             [it.distractors[prompt_type] for it in batch])
                psnr = background_psnr(images, edited, masks)
                ious: List[Optional[float]] = [None] * len(batch)
                de_masks = None
                if diffedit is not None:
                    side = unet.config.image_size
                    de_masks = diffedit.generate_mask(
                        _resize(images, side), [it.source_prompts[prompt_type] for it in batch], prompts,
                        n=diffedit_n, strength=diffedit_strength, normalise=diffedit_normalise, smooth=diffedit_smooth,
                        threshold=diffedit_threshold, generator=seeded_generator(seed, 10 + k, start))
                    de_masks = _resize_mask(de_masks.float().cpu(), resolution)
                    ious = mask_iou(de_masks, torch.stack([it.edit_region for it in batch])).tolist()
                for b, it in enumerate(batch):
                    checks = attribute_checks(it, edited[b])
                    records.append({
                        "index": it.index, "prompt_type": prompt_type, "attribute": it.attribute,
                        "object_category": it.object_category, "scene": it.scene, "mask_size": it.mask_size,
                        "prompt": prompts[b], "clip_score": float(scores[b]), "clip_r_precision": float(hits[b]),
                        "attribute_accuracy": float(checks[it.attribute]), "colour_accuracy": float(checks["colour"]),
                        "shape_accuracy": float(checks["shape"]), "count_accuracy": float(checks["count"]),
                        "background_psnr": float(psnr[b]), "diffedit_iou": ious[b]})
                    i = start + b
                    if i in example_images:
                        example_images[i][prompt_type] = edited[b]
                        if de_masks is not None:
                            example_images[i][f"diffedit_{prompt_type}"] = de_masks[b]
                bar.update(len(batch))
    bar.close()
    records.sort(key=lambda r: (r["index"], PROMPT_TYPES.index(r["prompt_type"])))
    config = {"items": len(items), "bench_seed": bench_seed, "seed": seed, "steps": steps,
              "guidance": guidance if isinstance(guidance, (int, float)) else repr(guidance),
              "dynamic_threshold": dynamic_threshold,
              "resolution": resolution, "model_resolution": out_side, "super_resolution": use_sr,
              "diffedit_n": diffedit_n, "diffedit_strength": diffedit_strength,
              "diffedit_normalise": diffedit_normalise, "diffedit_smooth": diffedit_smooth,
              "diffedit_threshold": diffedit_threshold, "batch_size": batch_size,
              "mask_size_bins": [SMALL_BELOW, LARGE_FROM], "silhouette_threshold": SILHOUETTE_THRESHOLD,
              "prompts_truncated": truncated}
    shown = [{"item": items[i], **images} for i, images in example_images.items()]
    return EditBenchResult(name, config, records, summarize(records), shown)


def _load_model(spec, bundle):
    """(unet, noise schedule, text encoder) of a comparison entry: a Bundle or bundle folder (its base
    model and text encoder), a UNet folder with diffusion.json, or a loaded UNet (the bundle's schedule
    and text encoder)."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: model folder not found")
        if (path / "base").is_dir():
            spec = Bundle(path)
        else:
            diffusion = path / "diffusion.json"
            if not diffusion.is_file():
                raise FileNotFoundError(f"{path}: neither a model bundle (no base/) nor a UNet folder "
                                        "(no diffusion.json)")
            return UNet.from_pretrained(path), NoiseSchedule.from_config(json.loads(diffusion.read_text())), None
    if isinstance(spec, Bundle):
        return spec.unet("base"), spec.noise_schedule("base"), spec.text_encoder
    if isinstance(spec, UNet):
        return spec, bundle.noise_schedule("base"), None
    raise TypeError(f"a model must be a Bundle, a folder or a UNet, got {type(spec).__name__}")


def compare_editbench(models: Sequence[Tuple[str, Any]], bundle, *, out=None, **kwargs) -> Dict[str, EditBenchResult]:
    """Run the same benchmark (same items, same noise) on several base models and return each result.

    ``models`` is a list of (name, model): a Bundle or bundle folder, a base UNet folder (with its
    diffusion.json) or a UNet. ``bundle`` supplies the evaluator's CLIP — one CLIP for every model, so
    the scores compare — and the text encoder of models that bring none. With ``out``, writes the
    per-mask-size comparison table OUT/editbench_compare.md (and .json; see
    `diffrt.eval.report.write_comparison`). ``kwargs`` go to `run_editbench`.
    """
    names = [name for name, _ in models]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"models must be non-empty (name, model) pairs with distinct names, got names {names}")
    loaded = [(name, *_load_model(spec, bundle)) for name, spec in models]
    if kwargs.get("items") is None:
        side = kwargs.get("resolution") or loaded[0][1].config.image_size
        kwargs["items"] = editbench(kwargs.pop("n_items", DEFAULT_ITEMS), resolution=side,
                                    seed=kwargs.get("bench_seed", DEFAULT_SEED))
        kwargs["resolution"] = side
    results = {name: run_editbench(bundle, unet=unet, noise_schedule=schedule, text_encoder=encoder, name=name,
                                   **kwargs)
               for name, unet, schedule, encoder in loaded}
    if out is not None:
        write_comparison(results, out)
    return results
