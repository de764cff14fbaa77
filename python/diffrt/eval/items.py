"""Drawing EditBench's items from the procedural world: a source scene, one attribute of one object
changed, the mask, the three prompts of the result and of the source, and CLIP-R-Precision's
distractor prompts.

The world supplies every item's ground truth: the source scene, the edited scene, exact object
masks and the background the edited object sits on. The mask of an item is the box of every
instance of the source and of the edited object, as an ideal detector draws them (one box around
all of them for count edits, so that the mask does not give the count away).

Item i of seed s is drawn from its own generators (``numpy.random.default_rng([s, i, attempt])``),
so the set does not depend on how many items are drawn; its design cell (mask size, attribute,
object category, scene) comes from i alone (`diffrt.eval.design.design_cell`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.world import (BOUND, COLOUR_RGB, COLOURS, COUNTS, GAP, GLYPHS, SHAPES, SIZE_RADIUS, SIZES, TEXTURES,
                          BackgroundSpec, ObjectSpec, SceneSpec, caption_full, caption_rich, check_resolution, fits,
                          occupied, place, plural, render)
from .attributes import expected_attributes, predict_attributes
from .design import (DEFAULT_ITEMS, DEFAULT_SEED, MIDDLE_RADIUS, OBJECT_CATEGORIES, PROMPT_TYPES, EditBenchItem,
                     attribute_value, attribute_values, design_cell, mask_size_class)

_MAX_ATTEMPTS = 2000  # a small mask around a count edit is rare at 32 px (about 1 draw in 60)


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


def _place_beside(rng: np.random.Generator, obj: ObjectSpec, count: int,
                  tries: int = 60) -> Optional[Tuple[Tuple[float, float], ...]]:
    """Centres for ``count`` more instances of ``obj``, each next to one already there (a little more
    than the clearance away, in any direction): 'two circles' drawn as a group, not scattered."""
    step = 2 * obj.radius * BOUND + GAP
    taken = occupied(obj)
    added: List[Tuple[float, float]] = []
    for _ in range(count):
        for _ in range(tries):
            ax, ay, _ = taken[int(rng.integers(len(taken)))]
            angle, distance = rng.uniform(0, 2 * math.pi), step * rng.uniform(1.0, 1.25)
            x, y = ax + distance * math.cos(angle), ay + distance * math.sin(angle)
            if fits(x, y, obj.radius, taken):
                taken.append((x, y, obj.radius * BOUND))
                added.append((float(x), float(y)))
                break
        else:
            return None
    return tuple(added)


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
        bounds = occupied(edited)
        if not all(fits(x, y, radius, bounds[:k] + bounds[k + 1:]) for k, (x, y, _) in enumerate(bounds)):
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


def prompts_of(scene: SceneSpec, attribute: str) -> Dict[str, str]:
    """EditBench's three prompts (Mask-Simple, Mask-Rich, Full) for a scene whose first object is the edited one."""
    obj = scene.objects[0]
    return {"simple": mask_simple(obj, attribute), "rich": caption_rich(obj), "full": caption_full(scene)}


def with_value(obj: ObjectSpec, attribute: str, value) -> ObjectSpec:
    """``obj`` with the attribute set to ``value`` — for captions only (positions are not re-placed)."""
    if attribute == "colour":
        return dataclasses.replace(obj, colour=value, rgb=COLOUR_RGB[value])
    if attribute == "material":
        return dataclasses.replace(obj, texture=value)
    if attribute == "shape":
        return dataclasses.replace(obj, shape=value)
    if attribute == "size":
        return dataclasses.replace(obj, size=value, radius=MIDDLE_RADIUS[value])
    positions = (obj.positions * 3)[:value]  # a caption needs the count (and, for one, the first position)
    return dataclasses.replace(obj, positions=positions)


def _distractors(rng: np.random.Generator, target: SceneSpec, source: ObjectSpec, attribute: str,
                 category: str) -> Dict[str, List[str]]:
    """Two wrong versions of each prompt: the tested attribute at the source's value (the edit not
    made) and at one other value — so CLIP-R-Precision is 1/3 by chance for every attribute."""
    obj = target.objects[0]
    unedited, edited = attribute_value(source, attribute), attribute_value(obj, attribute)
    other = _pick(rng, attribute_values(attribute, category), [edited, unedited])
    out: Dict[str, List[str]] = {p: [] for p in PROMPT_TYPES}
    for value in (unedited, other):
        wrong = dataclasses.replace(target, objects=(with_value(obj, attribute, value),) + target.objects[1:])
        for p, text in prompts_of(wrong, attribute).items():
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
    positions = place(rng, radius, int(_pick(rng, counts)), [])
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
        o_pos = place(rng, o_radius, 1, occupied(source) + occupied(target))
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
        prompts=prompts_of(target_scene, attribute), mask_size=mask_size, labels=target.labels(), attribute=attribute,
        object_category=object_category, scene=scene, target_image=torch.from_numpy(tgt.image),
        target_mask=torch.from_numpy(tgt.objects[0].mask)[None], clean_image=torch.from_numpy(clean.image),
        source_prompts=prompts_of(source_scene, attribute), source_labels=source.labels(),
        distractors=_distractors(rng, target_scene, source, attribute, object_category),
        source_scene=source_scene, target_scene=target_scene)
    truth, before = predict_attributes(item, item.target_image), predict_attributes(item, item.image)
    expected = expected_attributes(item)
    if any(truth[a] != expected[a] for a in ("colour", "shape", "count", attribute)):
        return None  # the checks cannot confirm the perfect edit at this resolution
    if before[attribute] == expected[attribute]:
        return None  # the edit is invisible to its check at this resolution
    return item
