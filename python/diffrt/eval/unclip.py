"""unCLIP's three uses of the CLIP image embedding on the procedural world (``diffrt eval unclip``).

unCLIP (DALL-E 2, Ramesh et al. 2022) decodes images from CLIP image embeddings, so what an
embedding keeps of an image is what its variations (§3.1), interpolations (§3.2) and text diffs
(§3.3) keep. Each is checked here with the world's ground truth and the text-to-image checks of
`diffrt.eval.t2i` (`check`: background colour, object colour, position — the caption's 3×3 cell —
and, on shape-checkable items, shape).

**Items** (`unclip_item`): the single-object scenes of ``diffrt eval t2i`` (`t2i.t2i_item`, the same
benchmark seed gives the same scenes), rendered at the decoder's side, each with a **target scene**:
the same scene with the object in another colour (none of the scene's colours), whose Full caption
is the text diff's target.

**Variations.** Per input, ``variations`` outputs of the pipeline's method (the decoder DDIM-inverted
on the input under its own embedding, then decoded with η noise: `UnCLIPPipeline.variations`) and as
many decoded from fresh noise under the same embedding ("embedding only"), which shows what the
embedding itself carries — the inverted noise can carry the input's layout on its own. Each output
is checked against the **input's** labels: background, object colour, position, shape kept, and
"colour+background+position" all kept. **Diversity**: the RMS pixel distance between two outputs of
one input (images in [−1, 1]); **distance to the input**: each output's RMS distance from it.

**Interpolation.** Items 2k and 2k + 1 form a pair (A, B); slerp(z_A, z_B, t) for t ∈ {0, ½, 1}
is decoded from one shared noise (`UnCLIPPipeline.interpolate`). Endpoints: t = 0 checked against
A's labels, t = 1 against B's. Midpoint: its background colour and its object colour are each one
of the two endpoints' (an interpolation between two scenes, not a third scene).

**Text diffs.** z_θ = slerp(z_i, |z_i|·normalise(z_t − z_t0), θ) for the input's Full caption t0 and
the target caption t (`UnCLIPPipeline.text_diff`, from the input's DDIM inversion at η = 0, as the
paper's Figure 5), for each amount θ: **moved** — the object colour
reads the target's; **background kept**, **position kept** — against the input; and moved with both
kept. θ = 0 decodes the input's own embedding: its "moved" is the floor.

Proportions carry 95 % Wilson intervals, means 95 % bootstrap intervals. The ground-truth renderings
give every check's ceiling ("input" for variations and endpoints, "target" for text diffs). Only the
decoder runs (no super-resolution), at its own side, with DDIM (trailing spacing); the noise of a
batch comes from (seed, first index of the batch, key), so outputs depend on ``batch_size`` (kept in
the config). A text-diff target's colour for item i is drawn from ``default_rng([s, i,
UNCLIP_STREAM])``, a generator no training sample uses (`diffrt.data.dataset`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.world import COLOURS, SceneSpec, caption_full, render
from ..models.tokenizer import TruncationWarning
from ..pipelines import UnCLIPPipeline
from ._shared import check_positive, seeded_generator
from .intervals import mean, proportion
from .items import with_value
from .t2i import DEFAULT_BENCH_SEED, T2IItem, check, t2i_item

DEFAULT_ITEMS = 60
UNCLIP_STREAM = 5  # the fourth word of a target colour's generator key (t2i pairs use 2, DiffEdit 3)
KEPT = ("background", "colour", "position", "shape", "all")  # "all": background, colour and position
VARIATION_METHODS = ("variation", "embedding_only", "input")
METHOD_NAMES = {"variation": "variations (inverted noise, η)", "embedding_only": "embedding only (fresh noise)",
                "input": "the input itself", "target": "the re-rendered target"}
DEFAULT_AMOUNTS = (0.0, 0.25, 0.5, 0.75)
INTERPOLATION_TS = (0.0, 0.5, 1.0)
VARIATION_KEY, EMBEDDING_KEY, INTERPOLATION_KEY, TEXT_DIFF_KEY = 1, 2, 3, 4


@dataclass
class UnCLIPItem:
    source: T2IItem  # the input scene, its Full caption, its rendering and its ground-truth checks
    target_scene: SceneSpec  # the same scene, the object in another colour
    target_prompt: str
    target_image: torch.Tensor

    @property
    def index(self) -> int:
        return self.source.index

    @property
    def target_colour(self) -> str:
        return self.target_scene.objects[0].colour


def unclip_item(seed: int, index: int, resolution: int) -> UnCLIPItem:
    """Item ``index`` of benchmark ``seed`` at ``resolution``: t2i item ``index`` and its target scene."""
    source = t2i_item(seed, index, resolution)
    obj, background = source.object, source.scene.background
    rng = np.random.default_rng([seed, index, 0, UNCLIP_STREAM])
    colour = str(rng.choice([c for c in COLOURS if c != obj.colour and c not in background.colours]))
    target = SceneSpec(background, (with_value(obj, "colour", colour),))
    return UnCLIPItem(source, target, caption_full(target), torch.from_numpy(render(target, resolution).image))


def unclip_items(n: int = DEFAULT_ITEMS, *, resolution: int = 32, seed: int = DEFAULT_BENCH_SEED) -> List[UnCLIPItem]:
    """``n`` items, deterministic in (seed, index, resolution)."""
    return [unclip_item(seed, i, resolution) for i in range(check_positive("n", n))]


# -- scoring -----------------------------------------------------------------------------------


def kept(item: T2IItem, image: torch.Tensor) -> Dict[str, Optional[bool]]:
    """Which of the item's labels ``image`` keeps (t2i's checks): background, colour, position, shape
    (None unless the item is shape-checkable) and "all" (background, colour and position)."""
    checks = check(item.scene, image)["checks"]
    out: Dict[str, Optional[bool]] = {k: bool(checks[k]) for k in ("background", "colour", "position")}
    out["shape"] = bool(checks["shape"]) if item.shape_checkable else None
    out["all"] = out["background"] and out["colour"] and out["position"]
    return out


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square pixel distance of two images in [−1, 1]."""
    return float((a.float() - b.float()).square().mean().sqrt())


def _cell(flags: Sequence[Optional[bool]]) -> Dict[str, Any]:
    return proportion([f for f in flags if f is not None])


def summarize(records: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Per variation method: each KEPT check's proportion, "diversity" and "distance_to_input" means;
    interpolation: endpoints' KEPT proportions and the midpoint's "background_either" /
    "colour_either"; text diffs per amount: "moved", "background_kept", "position_kept",
    "moved_kept". Every cell is {"value", "n", "ci95"}."""
    out: Dict[str, Any] = {"variations": {}, "text_diff": {}}
    for method in VARIATION_METHODS:
        rows = [r for r in records["variations"] if r["method"] == method]
        if not rows:
            continue
        cell = {k: _cell([r["kept"][k] for r in rows]) for k in KEPT}
        cell["distance_to_input"] = mean([r["distance_to_input"] for r in rows])
        diversity = [r["diversity"] for r in rows if r.get("diversity") is not None]
        cell["diversity"] = mean(diversity) if diversity else None
        out["variations"][method] = cell
    pairs = records["interpolation"]
    if pairs:
        out["interpolation"] = {
            "endpoints": {k: _cell([r[end][k] for r in pairs for end in ("start", "end")]) for k in KEPT},
            "background_either": _cell([r["mid_background_either"] for r in pairs]),
            "colour_either": _cell([r["mid_colour_either"] for r in pairs])}
    for row_amount in sorted({r["amount"] for r in records["text_diff"]}):
        rows = [r for r in records["text_diff"] if r["amount"] == row_amount]
        out["text_diff"][str(row_amount)] = {k: _cell([r[k] for r in rows])
                                             for k in ("moved", "background_kept", "position_kept", "moved_kept")}
    targets = records.get("target", [])
    if targets:
        out["text_diff"]["target"] = {k: _cell([r[k] for r in targets])
                                      for k in ("moved", "background_kept", "position_kept", "moved_kept")}
    return out


def text_diff_record(item: UnCLIPItem, image: torch.Tensor) -> Dict[str, bool]:
    """A text-diff output's checks: "moved" (the object colour is the target's), "background_kept" and
    "position_kept" (against the input) and "moved_kept" (all three)."""
    toward = check(item.target_scene, image)["checks"]
    source = check(item.source.scene, image)["checks"]
    moved, background, position = bool(toward["colour"]), bool(source["background"]), bool(source["position"])
    return {"moved": moved, "background_kept": background, "position_kept": position,
            "moved_kept": moved and background and position}


# -- running a model ---------------------------------------------------------------------------


def check_amounts(amounts: Sequence[float]) -> List[float]:
    try:
        values = [float(a) for a in amounts]
    except (TypeError, ValueError):
        raise ValueError(f"amounts must be a sequence of numbers in [0, 1], got {amounts!r}") from None
    if not values or not all(math.isfinite(a) and 0 <= a <= 1 for a in values) or len(set(values)) != len(values):
        raise ValueError(f"amounts must be distinct numbers in [0, 1], got {values}")
    return values


@torch.no_grad()
def run_unclip(bundle, *, items: int = DEFAULT_ITEMS, variations: int = 2, steps: int = 25, guidance: float = 3.0,
               eta: float = 0.1, inversion_guidance: Optional[float] = 1.0,
               amounts: Sequence[float] = DEFAULT_AMOUNTS, seed: int = 0, batch_size: int = 12,
               bench_seed: int = DEFAULT_BENCH_SEED, examples: int = 6, progress: bool = True) -> Dict[str, Any]:
    """Variations, interpolations and text diffs of ``items`` inputs with the bundle's CLIP, prior-free
    decoder (the ``decoder`` part) and text encoder; see the module docstring for the measures.

    ``variations`` outputs per input and method (≥ 2 for diversity); ``steps`` DDIM steps of the decoder
    with classifier-free guidance ``guidance`` (``inversion_guidance`` for the variations and text
    diffs, which decode the input's DDIM inversion; None: the same; `UnCLIPPipeline.variations` says
    why its default is 1); ``eta`` the variations' DDIM η; ``amounts`` the text
    diff's θ values. Returns {"config", "summary" (`summarize`), "records", "examples" (not JSON)}."""
    items = check_positive("items", items)
    variations = check_positive("variations", variations)
    steps = check_positive("steps", steps)
    batch_size = check_positive("batch_size", batch_size)
    seed = check_positive("seed", seed, allow_zero=True)
    bench_seed = check_positive("bench_seed", bench_seed, allow_zero=True)
    examples = check_positive("examples", examples, allow_zero=True)
    if inversion_guidance is None:
        inversion_guidance = guidance
    for name, value in (("guidance", guidance), ("inversion_guidance", inversion_guidance), ("eta", eta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    amounts = check_amounts(amounts)
    for part in ("clip", "decoder"):
        if not bundle.has(part):
            raise FileNotFoundError(f"{bundle.directory} has no '{part}' model, which the unCLIP evaluation needs")
    decoder, clip = bundle.unet("decoder"), bundle.clip
    pipe = UnCLIPPipeline(None, decoder, bundle.text_encoder, clip.encode_image,
                          noise_schedule=bundle.noise_schedule("decoder"), num_steps=steps)
    side, clip_side = decoder.config.image_size, clip.config.image_size
    to_clip = (lambda x: x) if clip_side == side else \
        (lambda x: F.interpolate(x, size=(clip_side, clip_side), mode="bilinear", antialias=True, align_corners=False))
    options = dict(guidance=float(guidance), output_type="pt", progress=False)
    records: Dict[str, List[Dict[str, Any]]] = {"variations": [], "interpolation": [], "text_diff": [], "target": []}
    shown: List[Dict[str, Any]] = []
    tokenizer = bundle.text_encoder.tokenizer
    truncated = 0
    bar = tqdm(total=items, desc="unCLIP", unit="input", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted in the config, not printed per batch
        # even batches, so that interpolation pairs (2k, 2k + 1) never straddle two batches
        step = batch_size + batch_size % 2
        for start in range(0, items, step):
            batch = [unclip_item(bench_seed, i, side) for i in range(start, min(start + step, items))]
            images = torch.stack([it.source.image for it in batch])
            truncated += sum(len(tokenizer.encode(p)) > tokenizer.max_length - 2
                             for it in batch for p in (it.source.prompt, it.target_prompt))
            clip_images = to_clip(images)
            z = clip.encode_image(clip_images)
            var = pipe.variations(clip_images, num_variations=variations, eta=float(eta),
                                  guidance=float(inversion_guidance), output_type="pt", progress=False,
                                  generator=seeded_generator(seed, start, VARIATION_KEY)).images
            g = seeded_generator(seed, start, EMBEDDING_KEY)
            noise = torch.randn((len(batch) * variations, decoder.in_channels, side, side), generator=g)
            fresh = pipe.decode(z.repeat_interleave(variations, 0), x_T=noise, guidance=float(guidance), progress=False)
            outputs = {"variation": var.float().clamp(-1, 1).cpu(), "embedding_only": fresh.float().clamp(-1, 1).cpu()}
            for b, it in enumerate(batch):
                for method, x in outputs.items():
                    mine = x[b * variations: (b + 1) * variations]
                    diversity = [rms(mine[i], mine[j]) for i in range(variations) for j in range(i + 1, variations)]
                    for k, image in enumerate(mine):
                        records["variations"].append({
                            "index": it.index, "method": method, "k": k, "kept": kept(it.source, image),
                            "distance_to_input": rms(image, it.source.image),
                            "diversity": float(np.mean(diversity)) if diversity and k == 0 else None})
                records["variations"].append({"index": it.index, "method": "input", "k": 0,
                                              "kept": kept(it.source, it.source.image), "distance_to_input": 0.0,
                                              "diversity": None})
            # interpolation: pairs (2k, 2k + 1) within the batch
            a_rows = list(range(0, len(batch) - 1, 2))
            mids = None
            if a_rows:
                frames = pipe.interpolate(z[a_rows], z[[r + 1 for r in a_rows]], INTERPOLATION_TS,
                                          generator=seeded_generator(seed, start, INTERPOLATION_KEY),
                                          **options).images.float().clamp(-1, 1).cpu()
                frames = frames.view(len(a_rows), len(INTERPOLATION_TS), *frames.shape[1:])
                mids = frames
                for p, r in enumerate(a_rows):
                    a, b_ = batch[r].source, batch[r + 1].source
                    mid = frames[p, 1]
                    mid_a, mid_b = check(a.scene, mid)["checks"], check(b_.scene, mid)["checks"]
                    records["interpolation"].append({
                        "index_a": a.index, "index_b": b_.index, "start": kept(a, frames[p, 0]),
                        "end": kept(b_, frames[p, -1]),
                        "mid_background_either": bool(mid_a["background"] or mid_b["background"]),
                        "mid_colour_either": bool(mid_a["colour"] or mid_b["colour"])})
            diffs = pipe.text_diff(clip_images, [it.source.prompt for it in batch], [it.target_prompt for it in batch],
                                   amounts, guidance=float(inversion_guidance), output_type="pt", progress=False,
                                   generator=seeded_generator(seed, start, TEXT_DIFF_KEY)).images
            diffs = diffs.float().clamp(-1, 1).cpu()
            diffs = diffs.view(len(batch), len(amounts), *diffs.shape[1:])
            for b, it in enumerate(batch):
                for a, amount in enumerate(amounts):
                    records["text_diff"].append({"index": it.index, "amount": amount,
                                                 "target_colour": it.target_colour, **text_diff_record(it, diffs[b, a])})
                records["target"].append({"index": it.index, **text_diff_record(it, it.target_image)})
                if len(shown) < examples:
                    pair = b - b % 2
                    shown.append({"item": it, "variation": outputs["variation"][b * variations: (b + 1) * variations],
                                  "embedding_only": outputs["embedding_only"][b * variations: (b + 1) * variations],
                                  "text_diff": diffs[b], "amounts": amounts,
                                  "interpolation": None if mids is None or pair // 2 >= len(a_rows) else
                                  mids[pair // 2]})
            bar.update(len(batch))
    bar.close()
    config = {"items": items, "bench_seed": bench_seed, "seed": seed, "variations": variations, "steps": steps,
              "guidance": guidance, "inversion_guidance": inversion_guidance, "eta": eta, "amounts": amounts,
              "interpolation_ts": list(INTERPOLATION_TS),
              "spacing": "trailing", "batch_size": step, "resolution": side, "clip_resolution": clip_side,
              "prompts_truncated": truncated}
    return {"config": config, "summary": summarize(records), "records": records, "examples": shown}

