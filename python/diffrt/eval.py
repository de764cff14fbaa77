"""An EditBench-style benchmark on the procedural world, its automatic metrics, and ``diffrt eval editbench``.

EditBench (Imagen Editor, Wang et al. 2023, §4) pairs each image with a mask and three prompts —
Mask-Simple ("a metal cat"), Mask-Rich (the masked object with all its attributes) and Full (the
whole edited image) — and breaks results down by mask size (small / medium / large), by the
attribute an edit tests (colour, material, shape, size, count), by object (common, rare, text
rendering) and by scene. Here the world supplies every item's ground truth: the source scene, the
edited scene (one attribute of one object changed), exact object masks and the background the
edited object sits on. So next to CLIPScore and CLIP-R-Precision (with the bundle's CLIP) the
evaluation checks each attribute directly on the model's output (`predict_attributes`: the
painted silhouette against re-renderings of every possible answer), measures background
preservation outside the mask, and scores DiffEdit's automatic mask against the true edit region.

The mask of an item is the box of every instance of the source and of the edited object, as an
ideal detector draws them (one box around all of them for count edits, so that the mask does not
give the count away).

Item i of seed s is drawn from its own generators (``numpy.random.default_rng([s, i, attempt])``),
so the set does not depend on how many items are drawn; its design cell (mask size, attribute,
object category, scene) comes from i alone, so every 15 consecutive items are balanced over mask
sizes, attributes and object categories, and the scene rotates with them (`design_cell`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .data.world import (BACKGROUNDS, COLOUR_RGB, COLOURS, COUNTS, GLYPHS, SHAPES, SIZE_RADIUS, SIZES, TEXTURES,
                         BackgroundSpec, ObjectSpec, SceneSpec, caption_full, caption_rich, check_resolution, plural,
                         render)
# The world's placement rule (bounding circle of BOUND·radius plus a gap), so that edited and added
# instances keep the same clearances as sampled ones.
from .data.world import _BOUND, _GAP

PROMPT_TYPES = ("simple", "rich", "full")
PROMPT_NAMES = {"simple": "Mask-Simple", "rich": "Mask-Rich", "full": "Full"}
ATTRIBUTES = ("colour", "material", "shape", "size", "count")  # material = the world's texture
OBJECT_CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "common": ("circle", "square", "triangle"),
    "rare": ("diamond", "star", "cross"),
    "text": GLYPHS,  # text rendering: letters and digits
}
SCENES = BACKGROUNDS
MASK_SIZES = ("small", "medium", "large")
# EditBench bins its free-form masks at 21.5 % and 36.9 % of the image. The world's object boxes are
# smaller, so the bins here are the tertiles of its edit-box areas (at 32 and 64 px): under object
# masking small, medium and large masks are equally common.
SMALL_BELOW, LARGE_FROM = 0.075, 0.15
DEFAULT_ITEMS = 240  # EditBench's size
DEFAULT_SEED = 1234
# A pixel belongs to the painted object when some channel differs from the known background by
# more than this ([−1, 1] units: 0.4 = 20 % of the range). Object colours are drawn unlike the
# background's, so a rendered object clears it everywhere but at its anti-aliased fringe.
SILHOUETTE_THRESHOLD = 0.4
METRICS = ("clip_score", "clip_r_precision", "attribute_accuracy", "colour_accuracy", "shape_accuracy",
           "count_accuracy", "background_psnr", "diffedit_iou")
_MAX_ATTEMPTS = 2000  # a small mask around a count edit is rare at 32 px (about 1 draw in 60)
_MIDDLE_RADIUS = {s: (lo + hi) / 2 for s, (lo, hi) in SIZE_RADIUS.items()}


@dataclass
class EditBenchItem:
    index: int
    image: torch.Tensor  # (3, H, W) in [−1, 1]: the source scene
    mask: torch.Tensor  # (1, H, W), 1 = repaint: the boxes of the source and edited instances (count edits: one box)
    object_mask: torch.Tensor  # (1, H, W) bool, the source object's exact pixels
    prompts: Dict[str, str]  # {"simple", "rich", "full"}, describing the edit's result
    mask_size: str  # small / medium / large
    labels: Dict[str, object]  # the edited object's ground-truth attributes
    attribute: str = "colour"  # the attribute the edit changes (one of ATTRIBUTES)
    object_category: str = "common"  # of the edited object (one of OBJECT_CATEGORIES)
    scene: str = "plain"  # the background kind (one of SCENES)
    target_image: Optional[torch.Tensor] = None  # (3, H, W): the edited scene, the perfect edit
    target_mask: Optional[torch.Tensor] = None  # (1, H, W) bool, the edited object's exact pixels
    clean_image: Optional[torch.Tensor] = None  # (3, H, W): the scene without the edited object
    source_prompts: Dict[str, str] = field(default_factory=dict)  # the same three prompts for the source
    source_labels: Dict[str, object] = field(default_factory=dict)
    distractors: Dict[str, List[str]] = field(default_factory=dict)  # per prompt type, for CLIP-R-Precision
    source_scene: Optional[SceneSpec] = None  # edited object first
    target_scene: Optional[SceneSpec] = None
    _hypotheses: Optional[dict] = field(default=None, repr=False, compare=False)

    @property
    def edit_region(self) -> torch.Tensor:
        """(1, H, W) bool: every pixel the source or the edited object covers — what an edit mask should find."""
        return self.object_mask | self.target_mask


def mask_size_class(mask: torch.Tensor) -> str:
    area = float(mask.float().mean())
    return "small" if area < SMALL_BELOW else "large" if area >= LARGE_FROM else "medium"


def design_cell(index: int) -> Dict[str, str]:
    """The (mask size, attribute, object category, scene) item ``index`` tests.

    In block b = index // 15, position j = index % 15 sets mask size (j mod 3) and attribute (j div 3),
    so each block holds every (mask size, attribute) pair once; the object category (j + b mod 3) and
    scene (j div 3 + b mod 5) shift with the block, so every 15 items are balanced in each factor and
    every 45 (object × mask size) and 75 (scene × attribute) items cover each pair.
    """
    b, j = divmod(index, 15)
    return {"mask_size": MASK_SIZES[j % 3], "attribute": ATTRIBUTES[j // 3],
            "object_category": tuple(OBJECT_CATEGORIES)[(j + b) % 3], "scene": SCENES[(j // 3 + b) % 5]}


def editbench(n: int = DEFAULT_ITEMS, *, resolution: int = 64, seed: int = DEFAULT_SEED) -> List[EditBenchItem]:
    """n edit items (image, mask, prompts, ground truth), deterministic in (seed, index, resolution).

    Every item is kept only if its ground truth passes the automatic checks (the perfect edit scores
    1 on colour, shape, count and the tested attribute) and its source fails the tested attribute's
    check (the edit is visible at this resolution), so accuracy 1 is reachable and 0 is the source.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    resolution = check_resolution(resolution)
    return [edit_item(seed, i, resolution) for i in range(n)]


def edit_item(seed: int, index: int, resolution: int) -> EditBenchItem:
    """Item ``index`` of the benchmark ``seed`` at ``resolution`` (see `editbench`)."""
    cell = design_cell(index)
    for attempt in range(_MAX_ATTEMPTS):
        item = _draw_item(np.random.default_rng([seed, index, attempt]), index, resolution, **cell)
        if item is not None:
            return item
    raise RuntimeError(f"EditBench item {index} ({cell}) found no valid draw in {_MAX_ATTEMPTS} attempts at "
                       f"{resolution} px")


# -- drawing an item ---------------------------------------------------------------------------


def _fits(x: float, y: float, radius: float, taken: Sequence[Tuple[float, float, float]]) -> bool:
    lo, hi = radius * _BOUND + _GAP / 2, 1 - radius * _BOUND - _GAP / 2
    return (lo <= x <= hi and lo <= y <= hi and
            all(math.hypot(x - tx, y - ty) >= radius * _BOUND + tb + _GAP for tx, ty, tb in taken))


def _place(rng: np.random.Generator, radius: float, count: int, taken: List[Tuple[float, float, float]],
           tries: int = 60) -> Optional[Tuple[Tuple[float, float], ...]]:
    """Centres for ``count`` new instances inside the frame, clear of every (x, y, bound) in ``taken``."""
    lo, hi = radius * _BOUND + _GAP / 2, 1 - radius * _BOUND - _GAP / 2
    if lo > hi:
        return None
    placed: List[Tuple[float, float, float]] = []
    for _ in range(count):
        for _ in range(tries):
            x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
            if _fits(x, y, radius, list(taken) + placed):
                placed.append((x, y, radius * _BOUND))
                break
        else:
            return None
    return tuple((x, y) for x, y, _ in placed)


def _place_beside(rng: np.random.Generator, obj: ObjectSpec, count: int,
                  tries: int = 60) -> Optional[Tuple[Tuple[float, float], ...]]:
    """Centres for ``count`` more instances of ``obj``, each next to one already there (a little more
    than the clearance away, in any direction): 'two circles' drawn as a group, not scattered."""
    step = 2 * obj.radius * _BOUND + _GAP
    taken = _bounds(obj)
    added: List[Tuple[float, float]] = []
    for _ in range(count):
        for _ in range(tries):
            ax, ay, _ = taken[int(rng.integers(len(taken)))]
            angle, distance = rng.uniform(0, 2 * math.pi), step * rng.uniform(1.0, 1.25)
            x, y = ax + distance * math.cos(angle), ay + distance * math.sin(angle)
            if _fits(x, y, obj.radius, taken):
                taken.append((x, y, obj.radius * _BOUND))
                added.append((float(x), float(y)))
                break
        else:
            return None
    return tuple(added)


def _bounds(obj: ObjectSpec) -> List[Tuple[float, float, float]]:
    return [(x, y, obj.radius * _BOUND) for x, y in obj.positions]


def _pick(rng: np.random.Generator, options: Sequence, exclude: Sequence = ()) -> Any:
    options = [o for o in options if o not in exclude]
    return options[int(rng.integers(len(options)))]


def _edit(rng: np.random.Generator, source: ObjectSpec, attribute: str, category: str,
          free_colours: Sequence[str]) -> Optional[ObjectSpec]:
    """The source object with one attribute changed (None when the change does not fit the frame)."""
    if attribute == "colour":
        colour = _pick(rng, free_colours, [source.colour])
        return dataclasses.replace(source, colour=colour, rgb=COLOUR_RGB[colour])
    if attribute == "material":
        return dataclasses.replace(source, texture=_pick(rng, TEXTURES, [source.texture]))
    if attribute == "shape":
        return dataclasses.replace(source, shape=_pick(rng, OBJECT_CATEGORIES[category], [source.shape]))
    if attribute == "size":
        size = _pick(rng, SIZES, [source.size])
        radius = float(rng.uniform(*SIZE_RADIUS[size]))
        edited = dataclasses.replace(source, size=size, radius=radius)
        # same centres, new radius: still inside the frame and clear of each other
        bounds = _bounds(edited)
        if not all(_fits(x, y, radius, bounds[:k] + bounds[k + 1:]) for k, (x, y, _) in enumerate(bounds)):
            return None
        return edited
    count = _pick(rng, COUNTS, [source.count])
    if count < source.count:
        return dataclasses.replace(source, positions=source.positions[:count])
    extra = _place_beside(rng, source, count - source.count)
    return None if extra is None else dataclasses.replace(source, positions=source.positions + extra)


def _phrase(words: Sequence[str], noun: str, count: int) -> str:
    if count == 1:
        return ("an " if words[0][0] in "aeiou" else "a ") + " ".join([*words, noun])
    return " ".join([{2: "two", 3: "three"}[count], *words, plural(noun)])


def mask_simple(obj: ObjectSpec, attribute: str) -> str:
    """Mask-Simple: colour, count and object, plus the tested attribute when that is size or material
    ('a large red circle', 'two red striped stars') — EditBench's short prompts name what is asked for."""
    words = (([obj.size] if attribute == "size" else []) + [obj.colour]
             + ([obj.texture] if attribute == "material" else []))
    return _phrase(words, obj.noun, obj.count)


def _prompts(scene: SceneSpec, attribute: str) -> Dict[str, str]:
    obj = scene.objects[0]
    return {"simple": mask_simple(obj, attribute), "rich": caption_rich(obj), "full": caption_full(scene)}


def _with_value(obj: ObjectSpec, attribute: str, value) -> ObjectSpec:
    """``obj`` with the attribute set to ``value`` — for captions only (positions are not re-placed)."""
    if attribute == "colour":
        return dataclasses.replace(obj, colour=value, rgb=COLOUR_RGB[value])
    if attribute == "material":
        return dataclasses.replace(obj, texture=value)
    if attribute == "shape":
        return dataclasses.replace(obj, shape=value)
    if attribute == "size":
        return dataclasses.replace(obj, size=value, radius=_MIDDLE_RADIUS[value])
    positions = (obj.positions * 3)[:value]  # a caption needs the count (and, for one, the first position)
    return dataclasses.replace(obj, positions=positions)


def _value(obj: ObjectSpec, attribute: str):
    return {"colour": obj.colour, "material": obj.texture, "shape": obj.shape, "size": obj.size,
            "count": obj.count}[attribute]


def _values(attribute: str, category: str) -> Sequence:
    return {"colour": COLOURS, "material": TEXTURES, "shape": OBJECT_CATEGORIES[category], "size": SIZES,
            "count": COUNTS}[attribute]


def _distractors(rng: np.random.Generator, target: SceneSpec, source: ObjectSpec, attribute: str,
                 category: str) -> Dict[str, List[str]]:
    """Two wrong versions of each prompt: the tested attribute at the source's value (the edit not
    made) and at one other value — so CLIP-R-Precision is 1/3 by chance for every attribute."""
    obj = target.objects[0]
    other = _pick(rng, _values(attribute, category), [_value(obj, attribute), _value(source, attribute)])
    out: Dict[str, List[str]] = {p: [] for p in PROMPT_TYPES}
    for value in (_value(source, attribute), other):
        wrong = dataclasses.replace(target, objects=(_with_value(obj, attribute, value),) + target.objects[1:])
        for p, text in _prompts(wrong, attribute).items():
            out[p].append(text)
    return out


def _instance_boxes(obj: ObjectSpec, n: int) -> np.ndarray:
    """(n, n) bool: the union of each instance's box — every pixel the instance paints, anti-aliased
    fringe included, so a perfect edit leaves everything outside the mask untouched. Drawn on a plain
    background of another colour: what an instance paints does not depend on what lies under it."""
    background = BackgroundSpec("plain", (next(c for c in COLOURS if c != obj.colour),), 0.0, 0.1, 0)
    blank = render(SceneSpec(background, ()), n).image
    out = np.zeros((n, n), dtype=bool)
    for position in obj.positions:
        single = render(SceneSpec(background, (dataclasses.replace(obj, positions=(position,)),)), n).image
        ys, xs = np.nonzero(np.abs(single - blank).max(axis=0) > 0)
        if ys.size:
            out[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = True
    return out


def _source_support(mask_size: str, attribute: str) -> Tuple[Sequence[str], Sequence[int]]:
    """The source sizes and counts that can give a mask of this size class — a small mask never holds
    a large object or three instances — so that drawing wastes no attempts; draws are uniform within."""
    if mask_size != "small":
        return SIZES, COUNTS
    return (("small",), (1, 2)) if attribute == "count" else (("small", "medium"), (1, 2))


def _draw_item(rng: np.random.Generator, index: int, n: int, *, mask_size: str, attribute: str,
               object_category: str, scene: str) -> Optional[EditBenchItem]:
    bg_colours = tuple(str(c) for c in rng.choice(COLOURS, size=2 if scene in ("stripes", "painting") else 1,
                                                  replace=False))
    background = BackgroundSpec(scene, bg_colours, angle=float(rng.uniform(0, math.pi)),
                                period=float(rng.uniform(0.08, 0.16)), seed=int(rng.integers(2**31)))
    free = [c for c in COLOURS if c not in bg_colours]
    sizes, counts = _source_support(mask_size, attribute)
    size = _pick(rng, sizes)
    radius = float(rng.uniform(*SIZE_RADIUS[size]))
    positions = _place(rng, radius, int(_pick(rng, counts)), [])
    if positions is None:
        return None
    colour = _pick(rng, free)
    source = ObjectSpec(_pick(rng, OBJECT_CATEGORIES[object_category]), colour, COLOUR_RGB[colour],
                        _pick(rng, TEXTURES), size, radius, positions)
    target = _edit(rng, source, attribute, object_category, free)
    if target is None:
        return None
    box = _instance_boxes(source, n) | _instance_boxes(target, n)
    if attribute == "count":  # one box around all instances: the mask must not give the count away
        ys, xs = np.nonzero(box)
        box[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = True
    mask = torch.from_numpy(box[None].astype(np.float32))
    if mask_size_class(mask) != mask_size:
        return None
    # a second object (in most scenes), for the Full prompt and as context outside the mask
    others: Tuple[ObjectSpec, ...] = ()
    if rng.random() < 0.7:
        o_size = SIZES[int(rng.integers(2))]
        o_radius = float(rng.uniform(*SIZE_RADIUS[o_size]))
        o_pos = _place(rng, o_radius, 1, _bounds(source) + _bounds(target))
        o_colour = _pick(rng, free, [source.colour, target.colour])
        if o_pos is not None:
            other = ObjectSpec(_pick(rng, SHAPES + GLYPHS, [source.shape, target.shape]), o_colour,
                               COLOUR_RGB[o_colour], _pick(rng, TEXTURES), o_size, o_radius, o_pos)
            if not (_instance_boxes(other, n) & box).any():  # context only: nothing of it to repaint
                others = (other,)
    source_scene, target_scene = SceneSpec(background, (source,) + others), SceneSpec(background, (target,) + others)
    src, tgt = render(source_scene, n), render(target_scene, n)
    clean = render(SceneSpec(background, others), n)
    item = EditBenchItem(
        index=index, image=torch.from_numpy(src.image), mask=mask,
        object_mask=torch.from_numpy(src.objects[0].mask)[None],
        prompts=_prompts(target_scene, attribute), mask_size=mask_size, labels=target.labels(), attribute=attribute,
        object_category=object_category, scene=scene, target_image=torch.from_numpy(tgt.image),
        target_mask=torch.from_numpy(tgt.objects[0].mask)[None], clean_image=torch.from_numpy(clean.image),
        source_prompts=_prompts(source_scene, attribute), source_labels=source.labels(),
        distractors=_distractors(rng, target_scene, source, attribute, object_category),
        source_scene=source_scene, target_scene=target_scene)
    truth, before = predict_attributes(item, item.target_image), predict_attributes(item, item.image)
    expected = expected_attributes(item)
    if any(truth[a] != expected[a] for a in ("colour", "shape", "count", attribute)):
        return None  # the checks cannot confirm the perfect edit at this resolution
    if before[attribute] == expected[attribute]:
        return None  # the edit is invisible to its check at this resolution
    return item


# -- attribute checks: analysis by synthesis on the known background -------------------------


def silhouette(item: EditBenchItem, image: torch.Tensor) -> np.ndarray:
    """(H, W) bool: the pixels inside the mask where ``image`` differs from the scene without the
    edited object by more than SILHOUETTE_THRESHOLD in some channel — what was painted there."""
    diff = (image.float() - item.clean_image.float()).abs().amax(dim=0)
    return ((diff > SILHOUETTE_THRESHOLD) & (item.mask[0] > 0.5)).numpy()


def _object_alone(item: EditBenchItem, obj: ObjectSpec, *, in_mask: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(image (3, H, W), silhouette (H, W)) of ``obj`` drawn alone on the item's background; the
    silhouette is cut to the mask unless ``in_mask`` is False."""
    n = item.image.shape[-1]
    image = render(SceneSpec(item.target_scene.background, (obj,)), n).image
    inside = np.abs(image - _blank(item)).max(axis=0) > SILHOUETTE_THRESHOLD
    return image, inside & (item.mask[0].numpy() > 0.5) if in_mask else inside


def _blank(item: EditBenchItem) -> np.ndarray:
    hyp = _hypotheses_store(item)
    if "blank" not in hyp:
        hyp["blank"] = render(SceneSpec(item.target_scene.background, ()), item.image.shape[-1]).image
    return hyp["blank"]


def _hypotheses_store(item: EditBenchItem) -> dict:
    if item._hypotheses is None:
        item._hypotheses = {}
    return item._hypotheses


def _hypotheses(item: EditBenchItem) -> dict:
    """The edited object re-rendered with each value of shape, size and material (everything else as
    in the edit), as silhouettes and texture features: what each answer would look like here."""
    hyp = _hypotheses_store(item)
    if "shapes" in hyp:
        return hyp
    target = item.target_scene.objects[0]
    n = item.image.shape[-1]
    shapes = SHAPES + GLYPHS
    silhouettes = np.stack([_object_alone(item, dataclasses.replace(target, shape=s))[1] for s in shapes])
    hyp["shapes"] = shapes
    hyp["shape_silhouettes"] = np.packbits(silhouettes.reshape(len(shapes), -1), axis=1)  # 1 bit a pixel
    hyp["truth_silhouette"] = silhouettes[shapes.index(target.shape)]
    # not cut to the mask: a size larger than the mask allows must still look larger than one that fits
    hyp["size_areas"] = {}
    for size in SIZES:
        middle = dataclasses.replace(target, size=size, radius=_MIDDLE_RADIUS[size])
        hyp["size_areas"][size] = int(_closed(_object_alone(item, middle, in_mask=False)[1]).sum())
    hyp["instance_area"] = _closed(hyp["truth_silhouette"]).sum() / target.count
    radius_px = target.radius * n
    hyp["textures"] = {}
    for t in TEXTURES:
        image, inside = _object_alone(item, dataclasses.replace(target, texture=t))
        hyp["textures"][t] = texture_features(torch.from_numpy(image), inside, radius_px)
    hyp["radius_px"] = radius_px
    return hyp


def _unpack(hyp: dict, n: int) -> np.ndarray:
    return np.unpackbits(hyp["shape_silhouettes"], axis=1, count=n * n).reshape(-1, n, n).astype(bool)


# Every colour the world paints an object of a named colour with: its base, the accent of its
# striped / dotted / checkered textures, the shades of its metallic finish (0.5× to 1.2×) and some
# of those shades under the metallic highlight (mixed towards white).
def _palette() -> Dict[str, torch.Tensor]:
    out = {}
    for name, rgb in COLOUR_RGB.items():
        base = np.asarray(rgb, dtype=np.float64) / 255
        luminance = float(base @ np.array([0.299, 0.587, 0.114]))
        accent = base + (1.0 - base) * 0.55 if luminance < 0.45 else base * 0.5
        shades = [np.clip(base * s, 0, 1) for s in np.linspace(0.5, 1.2, 15)]
        highlights = [shade + (1 - shade) * h for shade in shades[::3] for h in (0.25, 0.5)]
        out[name] = torch.from_numpy(np.stack([base, accent, *shades, *highlights]) * 2 - 1).float()
    return out


_PALETTE = _palette()


def _segment_distance(pixels: torch.Tensor, background: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
    """Per pixel o with background b: min over entries e of the distance from o to the segment [b, e]
    — zero when o = (1 − α)·b + α·e for some α in [0, 1], i.e. e anti-aliased over b."""
    d = entries[None] - background[:, None]  # (P, E, 3)
    w = (pixels - background)[:, None]
    t = ((w * d).sum(-1) / d.square().sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (w - t[..., None] * d).norm(dim=-1).amin(dim=1)


def dominant_colour(image: torch.Tensor, region: torch.Tensor, background: Optional[torch.Tensor] = None) -> str:
    """The named colour whose palette best explains ``region`` ((1, H, W) or (H, W)) of ``image`` (3, H, W).

    A colour's palette is every colour the world paints it with (base, texture accent, metallic
    shades and highlights); its score is the median over the region's pixels of the RGB distance to
    the nearest palette entry — or, given the ``background`` (3, H, W) the object lies on, to the
    nearest mix of an entry with that background, so that anti-aliased fringe pixels (the majority
    of a small object's pixels) count for their colour — and the lowest score wins. Whole palettes,
    not single entries, keep a black object's grey stripes from reading as a white object's shadow.
    """
    region = torch.as_tensor(region).bool().reshape(image.shape[-2:])
    pixels = image.float()[:, region].T  # (P, 3)
    if pixels.shape[0] == 0:
        raise ValueError("region is empty")
    if background is None:
        scores = {c: float(torch.cdist(pixels, p).amin(dim=1).median()) for c, p in _PALETTE.items()}
    else:
        under = background.float()[:, region].T
        scores = {c: float(_segment_distance(pixels, under, p).median()) for c, p in _PALETTE.items()}
    return min(COLOURS, key=lambda c: scores[c])


def colour_accuracy(images: torch.Tensor, regions: torch.Tensor, colours: Sequence[str],
                    backgrounds: Optional[torch.Tensor] = None) -> float:
    """How often the repainted region's dominant colour is the colour the prompt asked for."""
    backgrounds = [None] * len(images) if backgrounds is None else backgrounds
    return float(np.mean([dominant_colour(im, r, bg) == c
                          for im, r, c, bg in zip(images, regions, colours, backgrounds)]))


def texture_features(image: torch.Tensor, region: np.ndarray, radius_px: float) -> np.ndarray:
    """A phase-free description of the material inside ``region``, on luminance L in [0, 1]: its
    spread std(L); the mean |ΔL| between region neighbours along x, y and both diagonals (stripes run
    along one diagonal, checks along the axes, dots everywhere); and the vertical slope dL/dy per
    object radius (a metallic finish is lit from above)."""
    lum = ((image.float().numpy() + 1) / 2 * np.array([0.299, 0.587, 0.114])[:, None, None]).sum(axis=0)
    region = np.asarray(region, dtype=bool)
    values = lum[region]
    if values.size == 0:
        return np.zeros(6)
    steps = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        first, second = _shifted_pairs(region, dy, dx)
        both = first & second
        if both.any():
            la, lb = _shifted_pairs(lum, dy, dx)
            steps.append(float(np.abs(la - lb)[both].mean()))
        else:
            steps.append(0.0)
    ys = np.nonzero(region)[0].astype(np.float64)
    slope = float(np.cov(ys, values)[0, 1] / ys.var()) * radius_px if ys.size > 1 and ys.var() > 0 else 0.0
    return np.array([values.std(), *steps, slope])


def _shifted_pairs(a: np.ndarray, dy: int, dx: int) -> Tuple[np.ndarray, np.ndarray]:
    """Views (a[y, x], a[y + dy, x + dx]) over every pair of positions inside the array (dy >= 0)."""
    h, w = a.shape
    x0, x1 = max(0, -dx), w - max(0, dx)
    return a[: h - dy, x0:x1], a[dy:, x0 + dx: x1 + dx]


def _closed(region: np.ndarray) -> np.ndarray:
    """Morphological closing with a 3×3 square (dilate, then erode): joins the bands a texture whose
    accent matches the background splits an object into, before counting and measuring it."""
    h, w = region.shape
    grown = np.pad(region, 1)
    grown = np.max([grown[dy: dy + h, dx: dx + w] for dy in range(3) for dx in range(3)], axis=0)
    padded = np.pad(grown, 1, constant_values=True)
    return np.min([padded[dy: dy + h, dx: dx + w] for dy in range(3) for dx in range(3)], axis=0)


def component_labels(region: np.ndarray) -> np.ndarray:
    """8-connected component labels of ``region`` (0 = outside): label propagation, each pixel taking
    the largest label among its neighbours until nothing changes."""
    h, w = region.shape
    labels = np.where(region, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        padded = np.pad(labels, 1)
        grown = np.max([padded[dy: dy + h, dx: dx + w] for dy in range(3) for dx in range(3)], axis=0)
        grown = np.where(region, grown, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def _components(region: np.ndarray) -> np.ndarray:
    """Sizes of the 8-connected components of ``region``."""
    labels = component_labels(region)
    return np.unique(labels[region], return_counts=True)[1]


def expected_attributes(item: EditBenchItem) -> Dict[str, object]:
    """The edited object's colour, material, shape, size and count (what a perfect edit shows)."""
    obj = item.target_scene.objects[0]
    return {a: _value(obj, a) for a in ATTRIBUTES}


def predict_attributes(item: EditBenchItem, image: torch.Tensor) -> Dict[str, object]:
    """Each attribute of what ``image`` (3, H, W) painted inside the item's mask (None: nothing painted).

    On the silhouette S (`silhouette`): colour = the palette that best explains S over the known
    background (`dominant_colour`);
    shape = the shape or glyph whose silhouette, rendered at the edit's place and size, has the
    highest IoU with S (renderings identical at this resolution count as the same answer); material
    = the texture whose rendering's `texture_features` are nearest. On S closed (3×3, `_closed`):
    size = the size class whose rendering (at the class's middle radius) has the nearest area in
    log-area; count = the 8-connected components larger than a quarter of one expected instance.
    """
    if image.shape != item.image.shape:
        raise ValueError(f"image must have the item's shape {tuple(item.image.shape)}, got {tuple(image.shape)}")
    hyp = _hypotheses(item)
    n = image.shape[-1]
    s = silhouette(item, image)
    area = int(s.sum())
    if area == 0:
        return {a: None for a in ATTRIBUTES}
    silhouettes = _unpack(hyp, n)
    inter = (silhouettes & s).sum(axis=(1, 2))
    union = (silhouettes | s).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    best = int(iou.argmax())
    truth = item.target_scene.objects[0]
    shape = truth.shape if np.array_equal(silhouettes[best], hyp["truth_silhouette"]) else hyp["shapes"][best]
    closed = _closed(s) & (item.mask[0].numpy() > 0.5)
    size = min(SIZES, key=lambda c: abs(math.log(closed.sum()) - math.log(max(hyp["size_areas"][c], 1))))
    features = texture_features(image, s, hyp["radius_px"])
    distances = {t: float(np.linalg.norm(features - f)) for t, f in hyp["textures"].items()}
    material = min(TEXTURES, key=lambda t: distances[t])
    if np.array_equal(hyp["textures"][material], hyp["textures"][truth.texture]):
        material = truth.texture  # renders the same here
    count = int((_components(closed) >= max(1.0, hyp["instance_area"] / 4)).sum())
    colour = dominant_colour(image, torch.from_numpy(s), item.clean_image)
    return {"colour": colour, "material": material, "shape": shape, "size": size, "count": count}


def attribute_checks(item: EditBenchItem, image: torch.Tensor) -> Dict[str, bool]:
    """Per attribute, whether ``image`` shows the edited object's value (see `predict_attributes`)."""
    predicted, expected = predict_attributes(item, image), expected_attributes(item)
    return {a: predicted[a] is not None and predicted[a] == expected[a] for a in ATTRIBUTES}


# -- metrics -----------------------------------------------------------------------------------

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


BREAKDOWNS = {"mask_size": MASK_SIZES, "attribute": ATTRIBUTES, "object_category": tuple(OBJECT_CATEGORIES),
              "scene": SCENES}


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


# -- running a model on the benchmark ----------------------------------------------------------


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


def _text_to_image_encoder(unet, text_encoder) -> Callable[[List[str]], dict]:
    """The text condition of an image-conditioned UNet used as text-to-image (whole image masked),
    as DiffEdit needs it (the same as `Bundle.text_to_image_condition`, for any UNet)."""
    def encode(prompts):
        cond = text_encoder(list(prompts))
        if unet.config.cond_image:
            side = unet.config.cond_image_size or unet.config.image_size
            b = len(prompts)
            cond.update(image=torch.zeros(b, 3, side, side), mask=torch.ones(b, 1, side, side))
        return cond
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


def _generator(seed: int, *keys: int) -> torch.Generator:
    """A generator for one batch, from (seed, keys): the same item gets the same noise in any model."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


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


def threshold_label(config: Dict[str, Any]) -> str:
    """A report config's dynamic-thresholding percentile, or 'off' (also for reports that predate the key)."""
    return str(config.get("dynamic_threshold") or "off")


def _check_positive(name: str, value, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


@torch.no_grad()
def run_editbench(bundle, *, unet=None, noise_schedule=None, text_encoder=None, name: str = "model",
                  items: Optional[Sequence[EditBenchItem]] = None, n_items: int = DEFAULT_ITEMS,
                  bench_seed: int = DEFAULT_SEED, seed: int = 0, steps: int = 25, guidance=5.0,
                  dynamic_threshold: Optional[float] = None, resolution: Optional[int] = None,
                  use_sr: bool = False, diffedit_n: int = 10,
                  diffedit_strength: float = 0.5, batch_size: int = 16, examples: int = 6,
                  progress: bool = True) -> EditBenchResult:
    """Run the benchmark: inpaint every item with each prompt type and score the results.

    ``bundle`` (a :class:`diffrt.bundle.Bundle`) gives the evaluator — CLIP for CLIPScore and
    CLIP-R-Precision — and, unless overridden, the model: its base UNet (``unet``), noise schedule
    and text encoder. The base model inpaints at its own resolution (``use_sr`` runs the cascade's
    super-resolution stage too); the raw output is scored, not a composite, so that background
    PSNR measures what the model kept. DiffEdit's mask comes from the same base model used as
    text-to-image (source = the source object's prompt, target = the edited one, same prompt type);
    ``diffedit_n = 0`` skips it. Items are rendered at ``resolution`` (default: the output side) and
    resized to the model's input side when it differs.
    """
    from .models.tokenizer import TruncationWarning
    from .pipelines import DiffEditPipeline, ImagenEditorPipeline

    steps = _check_positive("steps", steps)
    batch_size = _check_positive("batch_size", batch_size)
    diffedit_n = _check_positive("diffedit_n", diffedit_n, allow_zero=True)
    if unet is None:
        unet = bundle.unet("base")
        noise_schedule = noise_schedule or bundle.noise_schedule("base")
    if noise_schedule is None:
        raise ValueError("a UNet given without its noise_schedule (diffrt.bundle.noise_schedule_from(diffusion.json))")
    if not getattr(getattr(unet, "config", None), "cond_image", False):
        raise ValueError("EditBench needs an inpainting UNet (cond_image = true), such as a bundle's base model")
    text_encoder = text_encoder or bundle.text_encoder
    clip, tokenizer = bundle.clip, bundle.text_encoder.tokenizer
    sr = bundle.unet("sr") if use_sr else None
    pipe = ImagenEditorPipeline(unet, noise_schedule, text_encoder, super_resolution=sr,
                                sr_noise_schedule=bundle.noise_schedule("sr") if use_sr else None,
                                num_steps=steps, sr_num_steps=max(1, steps // 2))
    last = sr or unet
    in_side = last.config.cond_image_size or last.config.image_size
    out_side = last.config.image_size
    resolution = check_resolution(resolution if resolution is not None else out_side)
    if items is None:
        items = editbench(_check_positive("n_items", n_items), resolution=resolution, seed=bench_seed)
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

    from tqdm.auto import tqdm

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
                           dynamic_threshold=dynamic_threshold, composite=False, generator=_generator(seed, k, start),
                           output_type="pt", progress=False)
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
                        n=diffedit_n, strength=diffedit_strength, generator=_generator(seed, 10 + k, start))
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
              "diffedit_n": diffedit_n, "diffedit_strength": diffedit_strength, "batch_size": batch_size,
              "mask_size_bins": [SMALL_BELOW, LARGE_FROM], "silhouette_threshold": SILHOUETTE_THRESHOLD,
              "prompts_truncated": truncated}
    shown = [{"item": items[i], **images} for i, images in example_images.items()]
    return EditBenchResult(name, config, records, summarize(records), shown)


def _load_model(spec, bundle):
    """(unet, noise schedule, text encoder) of a comparison entry: a Bundle or bundle folder (its base
    model and text encoder), a UNet folder with diffusion.json, or a loaded UNet (the bundle's schedule
    and text encoder)."""
    from .bundle import Bundle, noise_schedule_from
    from .models.unet import UNet

    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: model folder not found")
        if (path / "base").is_dir():
            spec = Bundle(path)
        else:
            import json

            diffusion = path / "diffusion.json"
            if not diffusion.is_file():
                raise FileNotFoundError(f"{path}: neither a model bundle (no base/) nor a UNet folder "
                                        "(no diffusion.json)")
            return UNet.from_pretrained(path), noise_schedule_from(json.loads(diffusion.read_text())), None
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
    `diffrt.eval_report.write_comparison`). ``kwargs`` go to `run_editbench`.
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
        from .eval_report import write_comparison

        write_comparison(results, out)
    return results


# -- diffrt eval editbench ---------------------------------------------------------------------


def _editbench_command(args) -> List[Path]:
    from .commands import CommandError, _bundle
    from . import eval_report

    if args.items < 1 or args.steps < 1:
        raise CommandError("--items and --steps must be >= 1")
    if args.no_plots is False and not eval_report.have_matplotlib():
        raise CommandError("the plots need matplotlib: pip install 'diffrt[eval]' (or pass --no-plots)")
    compare = []
    for entry in args.compare or []:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise CommandError(f"--compare takes NAME=DIR, got {entry!r}")
        compare.append((name, folder))
    bundle = _bundle(args)
    for part in ("clip", "base") + (("sr",) if args.sr else ()):
        if not bundle.has(part):
            hint = "" if args.model else " (the default weights folder; pass --model DIR)"
            raise CommandError(f"{bundle.directory}{hint} has no '{part}' model, which EditBench needs")
    name = args.model_name or (Path(args.model).resolve().name if args.model else "default")
    if any(n == name for n, _ in compare):
        raise CommandError(f"--compare name {name!r} is the evaluated model's name; pick another")
    options = dict(steps=args.steps, guidance=args.guidance, dynamic_threshold=args.dynamic_threshold, seed=args.seed,
                   bench_seed=args.bench_seed,
                   use_sr=args.sr, diffedit_n=args.diffedit_n, batch_size=args.batch_size, progress=not args.quiet)
    resolution = args.resolution
    last = bundle.unet("sr") if args.sr else bundle.unet("base")
    resolution = check_resolution(resolution if resolution is not None else last.config.image_size)
    items = editbench(args.items, resolution=resolution, seed=args.bench_seed)
    out = Path(args.out)
    result = run_editbench(bundle, name=name, items=items, resolution=resolution, **options)
    written = eval_report.write_report(result, out, plots=not args.no_plots)
    if compare:
        others = compare_editbench(compare, bundle, items=items, resolution=resolution, **options)
        results = {name: result, **others}
        for other_name, other in others.items():
            written += eval_report.write_report(other, out / "compare" / other_name, plots=not args.no_plots)
        written += eval_report.write_comparison(results, out)
    return written


def add_eval_command(sub) -> None:
    """Register ``diffrt eval editbench`` on the ``diffrt`` command's subparsers."""
    from .commands import add_threshold_option

    p = sub.add_parser("eval", help="benchmarks: diffrt eval editbench")
    benches = p.add_subparsers(dest="benchmark", required=True)
    e = benches.add_parser("editbench", help="EditBench-style inpainting evaluation on the procedural world",
                           description="Inpaint every EditBench item with its Mask-Simple, Mask-Rich and Full "
                                       "prompts and write OUT/editbench.json, OUT/editbench.md, plots and an "
                                       "example grid.")
    e.add_argument("--model", help="model folder (clip/, base/, …); default: the shipped weights")
    e.add_argument("--model-name", help="name in the report (default: the model folder's name)")
    e.add_argument("--items", type=int, default=DEFAULT_ITEMS, help=f"benchmark items (default {DEFAULT_ITEMS})")
    e.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    e.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance weight (default 5)")
    add_threshold_option(e)
    e.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    e.add_argument("--bench-seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the benchmark's items (default {DEFAULT_SEED})")
    e.add_argument("--resolution", type=int, help="render items at this side (default: the model's output side)")
    e.add_argument("--sr", action="store_true", help="evaluate base + super-resolution instead of the base alone")
    e.add_argument("--diffedit-n", type=int, default=10, help="DiffEdit mask noise draws (0 skips DiffEdit IoU)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--compare", action="append", metavar="NAME=DIR",
                   help="also evaluate this base model (a bundle or a UNet folder, with the main bundle's CLIP) "
                        "and write OUT/editbench_compare.md; repeatable")
    e.add_argument("--out", default="editbench", help="output folder (default: editbench)")
    e.add_argument("--no-plots", action="store_true", help="skip the matplotlib bar charts")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=_editbench_command)
    from .eval_t2i import add_t2i_command; add_t2i_command(benches)  # diffrt eval t2i


__all__ = ["ATTRIBUTES", "BREAKDOWNS", "DEFAULT_ITEMS", "EditBenchItem", "EditBenchResult", "MASK_SIZES", "METRICS",
           "OBJECT_CATEGORIES", "PROMPT_NAMES", "PROMPT_TYPES", "SCENES", "add_eval_command", "attribute_checks",
           "background_psnr", "by_mask_size", "clip_r_precision", "clip_r_precision_hits", "clip_score",
           "colour_accuracy", "compare_editbench", "design_cell", "dominant_colour", "edit_item", "editbench",
           "expected_attributes", "mask_iou", "mask_simple", "mask_size_class", "predict_attributes", "run_editbench",
           "silhouette", "summarize", "texture_features", "threshold_label"]
