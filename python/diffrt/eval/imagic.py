"""Imagic's edit / preservation trade-off per η on the procedural world (``diffrt eval imagic``).

Imagic (Kawar et al. 2023) edits one real image towards a target text: A. optimise the target
text's embedding e_tgt → e_opt so that the frozen model reconstructs the image, B. fine-tune the
model on the image with e_opt, C. sample from ē = η·e_tgt + (1 − η)·e_opt (`diffrt.pipelines.imagic`).
The paper's trade-off (its Fig. 7): as η grows the edit appears while the output drifts from the
input. This benchmark measures both sides of that curve on every η of a sweep.

**Items** (`imagic_item`). A single-object scene from the world's own sampler, as `diffrt.eval.t2i`
draws them (`sample_scene` with one object, redrawn until it has one instance), and the same scene
with one attribute of the object changed — its **colour** (even items: to a colour neither the
object nor the background has) or its **shape** (odd items: a shape becomes another shape, a letter
another letter, a digit another digit, as `diffrt.eval.diffedit` draws them). The target prompt is
the target scene's Full caption; Imagic sees the input image and that prompt only. Both scenes are
rendered at the base model's side (32 px for the shipped model), which gives the ground truth:

- the **changed pixels** (`ImagicItem.edit_region`): the object's pixels in the input ∪ in the
  target rendering (exact masks), and every pixel where the two renderings differ (the anti-aliased
  fringe) — what a perfect edit changes, so it keeps the cap of the background PSNR.

Each output is checked with the text-to-image checks (`diffrt.eval.t2i.check`) against the target
scene; since the scenes differ in one attribute, the same checks say what was kept of the source.
An item is kept only when the checks work on its ground truth: the target rendering passes the
edited attribute's check and the input fails it (so a perfect edit scores 1 and no edit 0), and
both renderings pass the background and position checks (so keeping them can score 1). The other
attribute is scored only where both renderings pass its check ("other-checkable"): for shape edits
the object's colour (all of the first 40 items' 20), for colour edits its shape (10 of 20) — at
32 px a small glyph is a few pixels, and the t2i shape check reads only some shapes
(`T2IItem.shape_checkable`). Shape edits are redrawn more often than colour edits for the same
reason (about 4 draws an item against 2), so they lean towards large shapes.

**Measures**, per item and η (`score_output`): **edit success** — the edited attribute reads the
target's value; **background kept** — the background check passes (the border ring shows the
background's colour); **position kept** — the object's centre lies in its cell; **other attribute
kept** (other-checkable items); **success with background kept** — edit success and background
kept; **background PSNR** — against the input, outside the changed pixels (PSNR_CAP when
untouched); **image PSNR** — against the whole input: at η = 0 it measures how well stages A and B
reconstruct the input. Every measure is summarised per η, overall and per attribute — the
trade-off curve — beside the same measures on the unedited input and on the target rendering
(`REFERENCES`: the floor and ceiling). The **best η** is the η with the highest success with
background kept (ties: the smaller η, the nearer the input). Proportions carry 95 % Wilson
intervals, means 95 % bootstrap intervals.

Item i of benchmark seed s is drawn from ``numpy.random.default_rng([s, i, attempt, IMAGIC_STREAM])``,
so the set does not depend on how many items are drawn, and no training sample (``default_rng([t,
j, 0])`` for data seed t, `diffrt.data.dataset`), no t2i item (``[s, i, attempt]``, padded with
zeros; two-object items stream 2), no DiffEdit item (stream 3) and no unCLIP text-diff colour
(stream 5) shares its generator. Stages A
and B of item i draw their timesteps and noise from ``seeded_generator(seed, i, IMAGIC_STREAM,
FIT_KEY)``; every η of item i starts from the same noise, ``seeded_generator(seed, i,
IMAGIC_STREAM, SAMPLE_KEY)``, so the sweep is comparable along η and does not depend on the fit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.world import COLOURS, DIGITS, LETTERS, SHAPES, SceneSpec, render, sample_scene
from ..models.tokenizer import TruncationWarning
from ..pipelines import ImagicPipeline
from ..pipelines.imagic import check_etas
from ._shared import check_positive, draw_item, seeded_generator
from .intervals import mean, proportion
from .items import with_value
from .metrics import background_psnr
from .t2i import check

ATTRIBUTES = ("colour", "shape")  # item i edits ATTRIBUTES[i % 2]
OTHER_ATTRIBUTE = {"colour": "shape", "shape": "colour"}  # what the edit must keep of the object
# The input itself (no edit: the floor of edit success, the cap of every preservation measure) and
# the re-rendered target (a perfect edit: the ceiling).
REFERENCES = ("unedited", "target")
REFERENCE_NAMES = {"unedited": "unedited input", "target": "re-rendered target"}
MEASURES = ("edit_success", "background_kept", "position_kept", "other_kept", "success_background_kept",
            "background_psnr", "image_psnr")
PROPORTIONS = ("edit_success", "background_kept", "position_kept", "other_kept", "success_background_kept")
BEST_BY = "success_background_kept"  # the measure that picks the best η
DEFAULT_ITEMS = 40
DEFAULT_BENCH_SEED = 1234
DEFAULT_ETAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# On the shipped 32 px base model an item takes about 9 s of one CPU core with these: stage A about
# 2 s, stage B 5 s, six η of 25 DDIM steps 2.5 s — the default 40 items about 6 minutes.
DEFAULT_EMBEDDING_STEPS, DEFAULT_FINETUNE_STEPS = 50, 100
# Stage A's learning rate is ten times the pipeline's default: at 1e-3, 50 Adam steps move e_opt's
# token states by about a tenth of the distance between the source and target captions', and every
# η samples the same image (the curve is flat); at 1e-2 η = 0 reconstructs the input and η = 1 edits.
EMBEDDING_LR, FINETUNE_LR = 1e-2, 1e-4
DEFAULT_STEPS, DEFAULT_GUIDANCE = 25, 3.0
# The fourth word of an item's generator key: non-zero and unlike the two-object t2i items' (2),
# DiffEdit's (3) and unCLIP's (5), so no other benchmark's draw shares it.
IMAGIC_STREAM = 4
FIT_KEY, SAMPLE_KEY = 1, 2  # item i's noise: seeded_generator(seed, i, IMAGIC_STREAM, key)
PSNR_CAP = 100.0  # background_psnr's value for an untouched background
_MAX_ATTEMPTS = 200  # at 32 px an item takes about 2 draws (colour) or 4 (shape)


# -- items -------------------------------------------------------------------------------------


@dataclass
class ImagicItem:
    index: int
    attribute: str  # "colour" or "shape": what the edit changes
    source_scene: SceneSpec  # one background, one object with one instance
    target_scene: SceneSpec  # the same with the object's attribute changed
    target_prompt: str  # the target scene's Full caption: what Imagic is given
    source_prompt: str  # the input's Full caption (for the report only)
    image: torch.Tensor  # (3, H, W) in [−1, 1]: the input, the source scene's rendering
    target_image: torch.Tensor  # (3, H, W): the target scene's rendering, a perfect edit
    edit_region: torch.Tensor  # (H, W) bool: the changed pixels
    other_checkable: bool  # both renderings pass the other attribute's check

    @property
    def source_value(self) -> str:
        return getattr(self.source_scene.objects[0], self.attribute)

    @property
    def target_value(self) -> str:
        return getattr(self.target_scene.objects[0], self.attribute)

    @property
    def labels(self) -> Dict[str, Any]:
        obj, bg = self.source_scene.objects[0], self.source_scene.background
        return {"attribute": self.attribute, "source_value": self.source_value, "target_value": self.target_value,
                "background": bg.kind, "size": obj.size, "category": "glyph" if obj.is_glyph else "shape"}


def _target_object(rng: np.random.Generator, scene: SceneSpec, attribute: str):
    source, bg = scene.objects[0], scene.background
    if attribute == "colour":
        colour = str(rng.choice([c for c in COLOURS if c not in bg.colours and c != source.colour]))
        return with_value(source, "colour", colour)
    # a letter stays a letter and a digit a digit: "letter A" → "digit 7" would change two words
    kind = SHAPES if not source.is_glyph else DIGITS if source.shape in DIGITS else LETTERS
    return dataclasses.replace(source, shape=str(rng.choice([s for s in kind if s != source.shape])))


def _draw(rng: np.random.Generator, index: int, n: int, attribute: str) -> Optional[ImagicItem]:
    scene = sample_scene(rng, max_objects=1)
    if scene.objects[0].count != 1:
        return None
    target_scene = SceneSpec(scene.background, (_target_object(rng, scene, attribute),))
    src, tgt = render(scene, n), render(target_scene, n)
    image, target_image = torch.from_numpy(src.image), torch.from_numpy(tgt.image)
    on_target, on_input = check(target_scene, target_image)["checks"], check(target_scene, image)["checks"]
    if not on_target[attribute] or on_input[attribute]:
        return None  # a perfect edit would not score 1, or no edit would not score 0
    if not all(c[k] for c in (on_target, on_input) for k in ("background", "position")):
        return None  # keeping the background or position could not score 1
    other = OTHER_ATTRIBUTE[attribute]
    changed = src.objects[0].mask | tgt.objects[0].mask | (np.abs(src.image - tgt.image).max(axis=0) > 0)
    return ImagicItem(index=index, attribute=attribute, source_scene=scene, target_scene=target_scene,
                      target_prompt=tgt.caption_full, source_prompt=src.caption_full, image=image,
                      target_image=target_image, edit_region=torch.from_numpy(changed),
                      other_checkable=bool(on_target[other] and on_input[other]))


def imagic_item(seed: int, index: int, resolution: int) -> ImagicItem:
    """Item ``index`` of the benchmark ``seed`` at ``resolution`` (see the module docstring)."""
    return draw_item(_draw, seed, index, resolution, stream=IMAGIC_STREAM, attributes=ATTRIBUTES, name="Imagic",
                     attempts=_MAX_ATTEMPTS)


def imagic_items(n: int = DEFAULT_ITEMS, *, resolution: int = 32, seed: int = DEFAULT_BENCH_SEED) -> List[ImagicItem]:
    """``n`` items, deterministic in (seed, index, resolution)."""
    n = check_positive("n", n)
    return [imagic_item(seed, i, resolution) for i in range(n)]


# -- scoring -----------------------------------------------------------------------------------


def score_output(item: ImagicItem, output: torch.Tensor) -> Dict[str, Any]:
    """One output's measures (see the module docstring): "edit_success", "background_kept",
    "position_kept", "other_kept" (None unless the item is other-checkable), "success_background_kept",
    "background_psnr" (dB outside the changed pixels, PSNR_CAP when untouched), "image_psnr" (dB over
    the whole image) and "predicted" (the edited attribute's value read back; None when no object
    stands out or, for shapes, two fit equally well)."""
    if output.shape != item.image.shape:
        raise ValueError(f"output must have the item's shape {tuple(item.image.shape)}, got {tuple(output.shape)}")
    output = output.float()
    result = check(item.target_scene, output, shapes=item.attribute == "shape" or item.other_checkable)
    checks = result["checks"]
    original, edited = item.image[None], output[None]
    everywhere = torch.zeros(1, 1, *item.edit_region.shape)
    return {"edit_success": bool(checks[item.attribute]), "background_kept": bool(checks["background"]),
            "position_kept": bool(checks["position"]),
            "other_kept": bool(checks[OTHER_ATTRIBUTE[item.attribute]]) if item.other_checkable else None,
            "success_background_kept": bool(checks[item.attribute] and checks["background"]),
            "background_psnr": float(background_psnr(original, edited, item.edit_region[None, None].float(),
                                                     cap=PSNR_CAP)[0]),
            "image_psnr": float(background_psnr(original, edited, everywhere, cap=PSNR_CAP)[0]),
            "predicted": result["predicted"][item.attribute]}


def _measure_cell(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"n": len(rows)}
    for m in MEASURES:
        values = [r[m] for r in rows if r.get(m) is not None]
        out[m] = (proportion if m in PROPORTIONS else mean)(values) if values else None
    return out


def _scopes(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return {"overall": _measure_cell(rows),
            "by_attribute": {a: _measure_cell(chosen) for a in ATTRIBUTES
                             if (chosen := [r for r in rows if r["attribute"] == a])}}


def summarize(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """"by_eta": per η of the records (ascending), {"eta", "overall", "by_attribute"} with every
    measure as {"value", "n", "ci95"} (Wilson for proportions, bootstrap for means) — the trade-off
    curve; "references": the same for the unedited input and the target rendering; "best_eta": the
    η with the highest BEST_BY (ties: the smaller η) and its overall measures (None without Imagic
    records); "reconstruction_psnr": the image PSNR at η = 0 (None when η = 0 is not swept)."""
    imagic = [r for r in records if r["output"] == "imagic"]
    etas = sorted({r["eta"] for r in imagic})
    by_eta = [{"eta": eta, **_scopes([r for r in imagic if r["eta"] == eta])} for eta in etas]
    out: Dict[str, Any] = {"by_eta": by_eta,
                           "references": {ref: _scopes(rows) for ref in REFERENCES
                                          if (rows := [r for r in records if r["output"] == ref])}}
    best = None
    for entry in by_eta:  # ascending η: a later η must score strictly higher to win
        score = entry["overall"][BEST_BY]
        if score is not None and (best is None or score["value"] > best["overall"][BEST_BY]["value"]):
            best = entry
    out["best_eta"] = None if best is None else {"eta": best["eta"], "measure": BEST_BY, **best["overall"]}
    zero = [entry for entry in by_eta if entry["eta"] == 0.0]
    out["reconstruction_psnr"] = zero[0]["overall"]["image_psnr"] if zero else None
    return out


# -- running a model ---------------------------------------------------------------------------


def _check_guidance(guidance) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    return float(guidance)


def run_imagic(bundle, *, items: int = DEFAULT_ITEMS, etas: Sequence[float] = DEFAULT_ETAS,
               embedding_steps: int = DEFAULT_EMBEDDING_STEPS, finetune_steps: int = DEFAULT_FINETUNE_STEPS,
               steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, seed: int = 0,
               bench_seed: int = DEFAULT_BENCH_SEED, embedding_lr: float = EMBEDDING_LR,
               finetune_lr: float = FINETUNE_LR, examples: int = 6, progress: bool = True) -> Dict[str, Any]:
    """Edit ``items`` items with Imagic and score every η of ``etas`` (`score_output`).

    The bundle's base model runs as a text-to-image model (`Bundle.text_to_image_condition`: the
    whole image masked) at its own resolution, where the items are rendered. Per item: stage A
    optimises the target prompt's condition for ``embedding_steps`` Adam steps (``embedding_lr``),
    stage B fine-tunes a copy of the whole model for ``finetune_steps`` (``finetune_lr``), stage C
    samples each η (sorted ascending; duplicates refused) with DDIM, trailing spacing, ``steps``
    steps and classifier-free guidance ``guidance``, all from the item's one noise. Stage A optimises
    every floating-point part of the condition (`ImagicPipeline.fit`): with the base model as
    text-to-image that includes the inpainting condition's zero image and all-ones mask.

    Returns {"config", "summary" (`summarize`), "records" (per item and η, and per item for each of
    REFERENCES), "examples" (the first ``examples`` items with their outputs; not JSON)}.
    """
    items = check_positive("items", items)
    steps = check_positive("steps", steps)
    embedding_steps = check_positive("embedding_steps", embedding_steps, allow_zero=True)
    finetune_steps = check_positive("finetune_steps", finetune_steps, allow_zero=True)
    seed = check_positive("seed", seed, allow_zero=True)
    bench_seed = check_positive("bench_seed", bench_seed, allow_zero=True)
    examples = check_positive("examples", examples, allow_zero=True)
    guidance = _check_guidance(guidance)
    etas = check_etas(etas)
    if len(set(etas)) != len(etas):
        raise ValueError(f"etas must be distinct, got {etas}")
    etas = sorted(etas)
    for part in ("clip", "base"):
        if not bundle.has(part):
            raise FileNotFoundError(f"{bundle.directory} has no '{part}' model, which the Imagic evaluation needs")
    unet = bundle.unet("base")
    side = unet.config.image_size

    def encode(prompts):
        return bundle.text_to_image_condition("base", list(prompts))

    pipe = ImagicPipeline(unet, bundle.noise_schedule("base"), encode, num_steps=steps)
    tokenizer = bundle.text_encoder.tokenizer
    truncated = 0
    records: List[Dict[str, Any]] = []
    shown: List[Dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted in the config, not printed per item
        for index in tqdm(range(items), desc="Imagic", unit="item", disable=not progress):
            it = imagic_item(bench_seed, index, side)
            truncated += len(tokenizer.encode(it.target_prompt)) > tokenizer.max_length - 2  # <bos>, <eos>
            pipe.fit(it.image[None], it.target_prompt, embedding_steps=embedding_steps, embedding_lr=embedding_lr,
                     finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                     generator=seeded_generator(seed, index, IMAGIC_STREAM, FIT_KEY), progress=False)
            outputs = pipe(etas, guidance=guidance, generator=seeded_generator(seed, index, IMAGIC_STREAM, SAMPLE_KEY),
                           output_type="pt", progress=False).images.float().clamp(-1, 1).cpu()
            base = {"index": index, **it.labels, "other_checkable": it.other_checkable,
                    "source_prompt": it.source_prompt, "target_prompt": it.target_prompt}
            for eta, output in zip(etas, outputs):
                records.append({**base, "output": "imagic", "eta": eta, **score_output(it, output)})
            for ref, image in (("unedited", it.image), ("target", it.target_image)):
                records.append({**base, "output": ref, "eta": None, **score_output(it, image)})
            if len(shown) < examples:
                shown.append({"item": it, "outputs": outputs})
    config = {"items": items, "bench_seed": bench_seed, "seed": seed, "etas": etas,
              "embedding_steps": embedding_steps, "embedding_lr": embedding_lr, "finetune_steps": finetune_steps,
              "finetune_lr": finetune_lr, "finetune": "full", "steps": steps, "spacing": "trailing",
              "guidance": guidance, "resolution": side, "attributes": list(ATTRIBUTES), "best_by": BEST_BY,
              "psnr_cap": PSNR_CAP, "prompts_truncated": truncated}
    return {"config": config, "summary": summarize(records), "records": records, "examples": shown}
