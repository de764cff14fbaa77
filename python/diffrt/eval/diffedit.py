"""DiffEdit against SDEdit on the procedural world (``diffrt eval diffedit``).

DiffEdit (Couairon et al. 2022) edits an image from a source caption to a target caption with no
user mask: it estimates where the two captions disagree (§3.2), DDIM-inverts the image to the
encoding ratio r under the source caption and decodes under the target caption, keeping the
inverted latents outside the mask (§3.3). The paper's comparison is SDEdit (Meng et al. 2022) at
the same ratio: the image noised to r and denoised under the target caption, with no mask.

**Items** (`diffedit_item`). A scene from the world's own sampler (`sample_scene`: a background and
one or two objects, one to three instances each) and the same scene with one attribute of one of
its objects changed — its **colour** (even items) or its **shape** (odd items: a shape becomes
another shape, a letter another letter, a digit another digit) to a value no object of the scene has
(nor, for colours, the background). The source and target captions are the two scenes' Full captions, which differ in that
one word. The edited object comes first in both scenes (and captions), as EditBench's checks
expect. The target scene is re-rendered with the world's renderer, which gives the ground truth:

- the **true region**: the edited object's pixels in the input ∪ in the target (exact masks) —
  what the automatic mask should find;
- the **changed pixels** (`EditBenchItem.mask` here): the true region and every pixel where the two
  renderings differ (the anti-aliased fringe) — everything a perfect edit changes.

An item is kept only when the target rendering passes the attribute's check and the input fails it
(`diffrt.eval.attributes.predict_attributes`, read inside the changed pixels), so a perfect edit
scores 1 and no edit 0 (at 32 px none of the default benchmark's first 200 items needed a redraw).
The shape check picks the shape whose rendering, cut to the changed pixels, best matches what was
painted there, so a blob filling the true region reads as the larger of the two shapes: the true
region filled with the target colour (`region_fill`, reported beside the methods) is the shape
check's floor — 0.19 of the first 100 shape edits.

**Measures**, per item and method (`score_edit`): **edit success** — the attribute read back inside
the changed pixels is the target's; **background PSNR** — outside the changed pixels (so a perfect
edit scores the cap); **success with background PSNR ≥ 28 dB**; and for DiffEdit's automatic mask
its **IoU** with the true region. Proportions carry 95 % Wilson intervals, means 95 % bootstrap
intervals, and DiffEdit − SDEdit a 95 % paired-bootstrap interval.

Item i of benchmark seed s is drawn from ``numpy.random.default_rng([s, i, attempt,
DIFFEDIT_STREAM])``, so the set does not depend on how many items are drawn, and no training sample
(``default_rng([t, j, 0])`` for data seed t, `diffrt.data.dataset`) shares its generator; the mask's
and SDEdit's noise for item i come from (seed, i, key), so they do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.world import (COLOUR_RGB, COLOURS, DIGITS, LETTERS, SHAPES, SIZES, SceneSpec, render,
                          sample_scene)
from ..models.tokenizer import TruncationWarning
from ..pipelines import DiffEditPipeline
from ..sampling import ddim_sample
from ._shared import check_positive, draw_item, seeded_generator
from .attributes import SILHOUETTE_THRESHOLD, expected_attributes, predict_attributes
from .design import OBJECT_CATEGORIES, EditBenchItem, mask_size_class
from .intervals import mean, paired_bootstrap_difference, proportion
from .items import prompts_of, with_value
from .metrics import background_psnr, mask_iou

ATTRIBUTES = ("colour", "shape")  # item i edits ATTRIBUTES[i % 2]
METHODS = ("diffedit", "sdedit", "diffedit_true_mask")
# The input itself (the floor), the true region filled with the target colour (what a blob of the
# right colour scores: the shape check's floor) and the re-rendered target (the ceiling).
REFERENCES = ("unedited", "region_fill", "target")
METHOD_NAMES = {"diffedit": "DiffEdit", "sdedit": "SDEdit", "diffedit_true_mask": "DiffEdit, true mask",
                "unedited": "unedited input", "region_fill": "true region in the target colour",
                "target": "re-rendered target"}
MEASURES = ("edit_success", "background_psnr", "background_kept", "success_psnr", "mask_iou")
PROPORTIONS = ("edit_success", "background_kept", "success_psnr")  # the rest are means
DEFAULT_ITEMS = 100
DEFAULT_BENCH_SEED = 1234
# The fourth word of an item's generator key: non-zero, so no t2i or EditBench item ([s, i, attempt],
# which numpy's SeedSequence pads with zeros) and no two-object t2i item (stream 2) shares it.
DIFFEDIT_STREAM = 3
MASK_KEY, SDEDIT_KEY = 1, 2  # the noise of item i: seeded_generator(seed, i, key)
PSNR_BAR = 28.0  # dB: "edit success with the background kept"
PSNR_CAP = 100.0  # background_psnr's value for an untouched background
_MAX_ATTEMPTS = 200


# -- items -------------------------------------------------------------------------------------


def _category(shape: str) -> str:
    return next(c for c, shapes in OBJECT_CATEGORIES.items() if shape in shapes)


def _draw(rng: np.random.Generator, index: int, n: int, attribute: str) -> Optional[EditBenchItem]:
    scene = sample_scene(rng)
    k = int(rng.integers(len(scene.objects)))
    source, others = scene.objects[k], scene.objects[:k] + scene.objects[k + 1:]
    bg = scene.background
    if attribute == "colour":
        taken = set(bg.colours) | {o.colour for o in scene.objects}
        colour = str(rng.choice([c for c in COLOURS if c not in taken]))
        target = with_value(source, "colour", colour)
    else:
        taken = {o.shape for o in scene.objects}
        # a letter stays a letter and a digit a digit: "letter A" → "digit 7" would change two words
        kind = SHAPES if not source.is_glyph else DIGITS if source.shape in DIGITS else LETTERS
        target = dataclasses.replace(source, shape=str(rng.choice([s for s in kind if s not in taken])))
    source_scene, target_scene = SceneSpec(bg, (source,) + others), SceneSpec(bg, (target,) + others)
    src, tgt = render(source_scene, n), render(target_scene, n)
    clean = render(SceneSpec(bg, others), n)
    object_mask, target_mask = src.objects[0].mask, tgt.objects[0].mask
    changed = object_mask | target_mask | (np.abs(src.image - tgt.image).max(axis=0) > 0)
    mask = torch.from_numpy(changed[None].astype(np.float32))
    item = EditBenchItem(
        index=index, image=torch.from_numpy(src.image), mask=mask, object_mask=torch.from_numpy(object_mask)[None],
        prompts=prompts_of(target_scene, attribute), mask_size=mask_size_class(mask), labels=target.labels(),
        attribute=attribute, object_category=_category(target.shape), scene=bg.kind,
        target_image=torch.from_numpy(tgt.image), target_mask=torch.from_numpy(target_mask)[None],
        clean_image=torch.from_numpy(clean.image), source_prompts=prompts_of(source_scene, attribute),
        source_labels=source.labels(), source_scene=source_scene, target_scene=target_scene)
    expected = expected_attributes(item)[attribute]
    if predict_attributes(item, item.target_image)[attribute] != expected:
        return None  # the check cannot confirm the perfect edit at this resolution
    if predict_attributes(item, item.image)[attribute] == expected:
        return None  # the edit is invisible to its check at this resolution
    return item


def diffedit_item(seed: int, index: int, resolution: int) -> EditBenchItem:
    """Item ``index`` of the benchmark ``seed`` at ``resolution`` (see the module docstring): an
    `EditBenchItem` whose ``mask`` is the changed pixels, ``edit_region`` the true region, and
    ``source_prompts["full"]`` / ``prompts["full"]`` the source and target captions."""
    return draw_item(_draw, seed, index, resolution, stream=DIFFEDIT_STREAM, attributes=ATTRIBUTES, name="DiffEdit",
                     attempts=_MAX_ATTEMPTS)


def diffedit_items(n: int = DEFAULT_ITEMS, *, resolution: int = 32, seed: int = DEFAULT_BENCH_SEED) -> List[EditBenchItem]:
    """``n`` items, deterministic in (seed, index, resolution)."""
    n = check_positive("n", n)
    return [diffedit_item(seed, i, resolution) for i in range(n)]


def region_fill(item: EditBenchItem) -> torch.Tensor:
    """The input with the true region painted in the edited object's target colour (its base RGB):
    an edit that gets the colour and the place right and draws no shape."""
    out = item.image.clone()
    rgb = torch.tensor(COLOUR_RGB[item.labels["colour"]], dtype=out.dtype) / 255 * 2 - 1
    out[:, item.edit_region[0]] = rgb[:, None]
    return out


# -- scoring -----------------------------------------------------------------------------------


def score_edit(item: EditBenchItem, edited: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """One edit's measures: "edit_success" (the item's attribute read back inside its changed pixels
    is the target's), "background_psnr" (dB outside the changed pixels, PSNR_CAP when untouched),
    "background_kept" (PSNR >= PSNR_BAR), "success_psnr" (both), "mask_iou" (of ``mask`` (1, H, W)
    with the true region; None without a mask) and "predicted" (the value read back; None when
    nothing stands out)."""
    if edited.shape != item.image.shape:
        raise ValueError(f"edited must have the item's shape {tuple(item.image.shape)}, got {tuple(edited.shape)}")
    predicted = predict_attributes(item, edited)[item.attribute]
    success = predicted is not None and predicted == expected_attributes(item)[item.attribute]
    psnr = float(background_psnr(item.image[None], edited[None].float(), item.mask[None], cap=PSNR_CAP)[0])
    iou = None if mask is None else float(mask_iou(mask[None].float() > 0.5, item.edit_region[None])[0])
    return {"edit_success": bool(success), "background_psnr": psnr, "background_kept": psnr >= PSNR_BAR,
            "success_psnr": bool(success and psnr >= PSNR_BAR), "mask_iou": iou, "predicted": predicted}


def _measure_cell(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"n": len(rows)}
    for m in MEASURES:
        values = [r[m] for r in rows if r.get(m) is not None]
        out[m] = (proportion if m in PROPORTIONS else mean)(values) if values else None
    return out


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per method (and reference): each measure overall, per attribute and per size class of the
    edited object — {"value", "n", "ci95"} (Wilson for proportions, bootstrap for means) — and
    "diffedit_vs_sdedit": DiffEdit − SDEdit per measure (but IoU), with paired-bootstrap intervals,
    overall and per attribute; DiffEdit's also holds the mean area of its masks and of the true
    regions ("mask_area", "true_area", fractions of the image)."""
    methods = [m for m in (*METHODS, *REFERENCES) if any(r["method"] == m for r in records)]
    out: Dict[str, Any] = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        out[method] = {"overall": _measure_cell(rows),
                       "by_attribute": {a: _measure_cell(chosen) for a in ATTRIBUTES
                                        if (chosen := [r for r in rows if r["attribute"] == a])},
                       "by_size": {s: _measure_cell(chosen) for s in SIZES
                                   if (chosen := [r for r in rows if r["size"] == s])}}
    if "diffedit" in out and "sdedit" in out:
        by_index = {m: {r["index"]: r for r in records if r["method"] == m} for m in ("diffedit", "sdedit")}
        shared = sorted(set(by_index["diffedit"]) & set(by_index["sdedit"]))
        out["diffedit_vs_sdedit"] = {}
        for scope in ("all", *ATTRIBUTES):
            chosen = [i for i in shared if scope == "all" or by_index["diffedit"][i]["attribute"] == scope]
            out["diffedit_vs_sdedit"][scope] = {
                m: paired_bootstrap_difference([float(by_index["diffedit"][i][m]) for i in chosen],
                                     [float(by_index["sdedit"][i][m]) for i in chosen])
                for m in ("edit_success", "background_psnr", "background_kept", "success_psnr")}
    if "diffedit" in out:
        rows = [r for r in records if r["method"] == "diffedit"]
        out["diffedit"]["mask_area"] = mean([r["mask_area"] for r in rows])
        out["diffedit"]["true_area"] = mean([r["true_area"] for r in rows])
    return out


# -- running a model ---------------------------------------------------------------------------


def sdedit(model, noise_schedule, image: torch.Tensor, schedule, *, cond, uncond, guidance: float,
           noise: torch.Tensor) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) at the ratio of ``schedule`` (a `SamplingSchedule.tail`): the image
    noised to its first timestep, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, then DDIM-sampled along it under
    ``cond`` (classifier-free guided with ``uncond``), with no mask."""
    t = torch.full((image.shape[0],), int(schedule.timesteps[0]), dtype=torch.long)
    x_t = noise_schedule.add_noise(image, noise.to(image.dtype), t)
    return ddim_sample(model, x_t, schedule, cond=cond, uncond=uncond, guidance=guidance, progress=False)


@torch.no_grad()
def run_diffedit(bundle, *, items: int = DEFAULT_ITEMS, steps: int = 25, strength: float = 0.5,
                 guidance: float = 3.0, mask_n: int = 10, mask_strength: Optional[float] = None,
                 mask_threshold: float = 0.5, mask_normalise: str = "mean", mask_smooth: int = 0,
                 seed: int = 0, batch_size: int = 16,
                 bench_seed: int = DEFAULT_BENCH_SEED, true_mask: bool = True, examples: int = 8,
                 progress: bool = True) -> Dict[str, Any]:
    """Edit ``items`` items with DiffEdit (automatic mask from ``mask_n`` noise draws, unguided, at
    ratio ``mask_strength`` (None: ``strength``), normalised by ``mask_normalise``, smoothed over
    ``mask_smooth`` pixels and binarised at ``mask_threshold``: `DiffEditPipeline.generate_mask`; the
    defaults are the paper's), SDEdit at the same ratio and, with ``true_mask``, DiffEdit handed the true
    region as its mask, and score each edit (`score_edit`).

    The bundle's base model runs as a text-to-image model (`Bundle.text_to_image_condition`: the
    whole image masked) at its own resolution, where the items are rendered; DDIM with trailing
    spacing over ``steps`` steps of which the last ⌈strength·steps⌉ run, decoding guided with weight
    ``guidance``. DiffEdit's decoding and SDEdit's are deterministic given the item's noise.

    Returns {"config", "summary" (`summarize`), "records" (per item and method), "examples" (the first
    ``examples`` items' images and masks; not JSON)}.
    """
    items = check_positive("items", items)
    steps = check_positive("steps", steps)
    mask_n = check_positive("mask_n", mask_n)
    batch_size = check_positive("batch_size", batch_size)
    seed = check_positive("seed", seed, allow_zero=True)
    bench_seed = check_positive("bench_seed", bench_seed, allow_zero=True)
    examples = check_positive("examples", examples, allow_zero=True)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1], got {strength!r}")
    if mask_strength is None:
        mask_strength = strength
    elif isinstance(mask_strength, bool) or not isinstance(mask_strength, (int, float)) or not 0 < mask_strength <= 1:
        raise ValueError(f"mask_strength must lie in (0, 1], got {mask_strength!r}")
    if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) \
            or not 0 <= mask_threshold < 1:
        raise ValueError(f"mask_threshold must lie in [0, 1), got {mask_threshold!r}")
    for part in ("clip", "base"):
        if not bundle.has(part):
            raise FileNotFoundError(f"{bundle.directory} has no '{part}' model, which the DiffEdit evaluation needs")
    unet, noise_schedule = bundle.unet("base"), bundle.noise_schedule("base")
    side = unet.config.image_size

    def encode(prompts):
        return bundle.text_to_image_condition("base", list(prompts))

    pipe = DiffEditPipeline(unet, noise_schedule, encode, num_steps=steps)
    tail = pipe.schedule.tail(strength, rounding=pipe.strength_rounding)  # the steps DiffEdit runs: SDEdit's too
    tokenizer = bundle.text_encoder.tokenizer
    truncated = 0
    records: List[Dict[str, Any]] = []
    shown: List[Dict[str, Any]] = []
    bar = tqdm(total=items, desc="DiffEdit", unit="item", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted in the config, not printed per batch
        for start in range(0, items, batch_size):
            batch = [diffedit_item(bench_seed, i, side) for i in range(start, min(start + batch_size, items))]
            images = torch.stack([it.image for it in batch])
            source = [it.source_prompts["full"] for it in batch]
            target = [it.prompts["full"] for it in batch]
            truncated += sum(len(tokenizer.encode(p)) > tokenizer.max_length - 2 for p in (*source, *target))
            # one mask per item, from its own noise: the mask does not depend on the batch
            masks = torch.cat([pipe.generate_mask(it.image[None], it.source_prompts["full"], it.prompts["full"],
                                                  n=mask_n, strength=mask_strength, threshold=mask_threshold,
                                                  normalise=mask_normalise, smooth=mask_smooth,
                                                  generator=seeded_generator(seed, it.index, MASK_KEY))
                               for it in batch]).float()
            edited = {"diffedit": pipe(images, source, target, mask=masks, strength=strength, guidance=guidance,
                                       output_type="pt", progress=False).images}
            noise = torch.stack([torch.randn(3, side, side, generator=seeded_generator(seed, it.index, SDEDIT_KEY))
                                 for it in batch])
            edited["sdedit"] = sdedit(unet, noise_schedule, images, tail, cond=encode(target),
                                      uncond=encode([""] * len(batch)), guidance=float(guidance), noise=noise)
            if true_mask:
                regions = torch.stack([it.edit_region for it in batch]).float()
                edited["diffedit_true_mask"] = pipe(images, source, target, mask=regions, strength=strength,
                                                    guidance=guidance, output_type="pt", progress=False).images
            edited = {m: x.float().clamp(-1, 1).cpu() for m, x in edited.items()}
            edited["unedited"], edited["target"] = images, torch.stack([it.target_image for it in batch])
            edited["region_fill"] = torch.stack([region_fill(it) for it in batch])
            for b, it in enumerate(batch):
                base = {"index": it.index, "attribute": it.attribute, "size": it.labels["size"],
                        "category": it.object_category, "background": it.scene,
                        "source_prompt": source[b], "target_prompt": target[b],
                        "source_value": it.source_labels[it.attribute], "target_value": it.labels[it.attribute],
                        "true_area": float(it.edit_region.float().mean())}
                for method, x in edited.items():
                    score = score_edit(it, x[b], masks[b] if method == "diffedit" else None)
                    if method == "diffedit":
                        score["mask_area"] = float(masks[b].mean())
                    records.append({**base, "method": method, **score})
                if len(shown) < examples:
                    shown.append({"item": it, "mask": masks[b], **{m: x[b] for m, x in edited.items()}})
            bar.update(len(batch))
    bar.close()
    config = {"items": items, "bench_seed": bench_seed, "seed": seed, "steps": steps, "strength": strength,
              "decode_steps": len(tail), "guidance": guidance, "mask_n": mask_n, "mask_strength": mask_strength,
              "mask_threshold": mask_threshold, "mask_normalise": mask_normalise, "mask_smooth": mask_smooth,
              "spacing": "trailing",
              "batch_size": batch_size, "resolution": side, "true_mask": true_mask, "psnr_bar": PSNR_BAR,
              "silhouette_threshold": SILHOUETTE_THRESHOLD, "attributes": list(ATTRIBUTES),
              "prompts_truncated": truncated}
    return {"config": config, "summary": summarize(records), "records": records, "examples": shown}
