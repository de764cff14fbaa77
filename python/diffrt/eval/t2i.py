"""Text-to-image prompt following on the procedural world (``diffrt eval t2i``).

Each item is a single-object scene drawn by the world's own sampler (`diffrt.data.world.sample_scene`
with one object; draws with two or three instances are redrawn) and its Full caption, e.g. "a large
red striped circle on the left on a plain blue background". The base model samples it as a
text-to-image model (the whole image masked, `Bundle.text_to_image_condition`) with DDIM, and each
sample is checked against the scene's ground truth (`predict`, `check`):

- **background**: the dominant named colour of the border ring (`background_colours`) is the
  background's colour — for two-colour backgrounds (stripes, painting) either of them.
- **colour**: the object's dominant palette colour (`object_colour`) is the prompted one. The
  object is the largest connected blob of pixels far from every colour of the estimated background
  (`object_region`).
- **position**: the object's centre (the centre of its blob's bounding box) lies in the 3×3 grid cell
  the caption names: `diffrt.data.world.spatial_phrase` applied to the centre, so the thresholds
  (1/3, 2/3) and wording are the caption's own.
- **colour+position**: colour and position both right.
- **shape**: the shape or glyph whose rendering at the blob's centre and size overlaps the blob
  best (IoU; a tie is no answer) is the prompted one. At 32 px a small glyph is a few pixels and a
  small circle and square can cover the same ones, so shape is scored only on the items whose
  ground-truth rendering passes the shape check at the evaluated resolution ("shape-checkable"
  items); the report gives their number.

Every accuracy is the fraction of items whose check passes, overall and per background kind, size
class (and medium + large together, where shapes become readable) and object category (shape or
glyph), with its 95 % Wilson interval. The same checks on the ground-truth renderings give the
ceiling of each metric, reported beside the model's.

**Two-object prompts** (`two_object_item`, `check_pair`): scenes from the same sampler with two
objects of one instance each, e.g. "a small red solid circle on the left and a large blue striped
star at the top right on a noisy white background". An object is found when one of the largest
blobs has its colour; the checks are each object's colour and (where checkable) shape, both colours,
and the relative position the caption's two cells imply (`implied_relation`: "left of" when the
first object's column is left of the second's, "above" for rows), which both objects must be
found for.

Item i of benchmark seed s is drawn from ``numpy.random.default_rng([s, i, attempt])`` (two-object
items from ``[s, i, attempt, TWO_OBJECT_STREAM]``), so the set does not depend on how many items are
drawn; sample i starts from noise seeded by (seed, i) (two-object: (seed, i, TWO_OBJECT_STREAM)), so
it does not depend on the batch size either. Training sample i of data seed t comes from
``default_rng([t, i, 0])`` (`diffrt.data.dataset`), so a benchmark seed that is no training seed
draws from generators no training run used: the shipped models trained on seeds 1–9 (and 10,000,001
for CLIP's tokenizer), the benchmark's default is 1234.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.world import (BACKGROUNDS, COLOUR_RGB, COLOURS, GLYPHS, SHAPES, SIZES, BackgroundSpec, ObjectSpec,
                          SceneSpec, caption_full, check_resolution, render, sample_scene, spatial_phrase)
from ..models.tokenizer import TruncationWarning
from ..sampling import ddim_sample
from ..schedules import SamplingSchedule
from ._shared import OBJECT_PALETTES, check_positive, closing, component_labels, seeded_generator
from .intervals import bootstrap_mean_interval, proportion

DEFAULT_ITEMS = 200
DEFAULT_BENCH_SEED = 1234
CATEGORIES = ("shape", "glyph")
CHECKS = ("background", "colour", "position", "colour_position", "shape")
BREAKDOWNS = {"background": BACKGROUNDS, "size": SIZES, "category": CATEGORIES}
SIZE_GROUPS = (("medium", "large"),)  # pooled size classes, reported as "medium+large"
# A pixel is foreground when its distance (max over R, G, B; [−1, 1] units) to every colour of the
# estimated background exceeds this: 15 % of the range. Lower than EditBench's silhouette threshold
# (0.4) because at 32 px a glyph's strokes are one or two pixels wide, so most of its pixels are
# anti-aliased mixes; at 0.4 the ground truth loses 4 % of colours and positions, at 0.3 about 1 %.
FOREGROUND_THRESHOLD = 0.3
# A ring pixel is a mix of two background colours when it lies this close (RGB distance, [−1, 1]
# units) to a mix of their palettes: the palettes' sampling is about 0.1 apart.
PAIR_TOLERANCE = 0.15
POSITION_MARGIN = 1.0  # pixels (see `position_matches`)
MAX_PIXELS, MAX_COLOURS = 256, 24  # bound the colour check's cost on a blob the size of the image
_MAX_ATTEMPTS = 200  # a draw has one instance with probability 1/3


# -- items -------------------------------------------------------------------------------------


@dataclass
class T2IItem:
    index: int
    scene: SceneSpec  # one background, one object with one instance
    prompt: str  # the scene's Full caption
    image: torch.Tensor  # (3, H, W) in [−1, 1]: the ground-truth rendering
    truth_checks: Dict[str, bool]  # `check` on the ground-truth rendering: each metric's ceiling

    @property
    def shape_checkable(self) -> bool:
        """Whether the ground truth passes the shape check at this resolution."""
        return self.truth_checks["shape"]

    @property
    def object(self) -> ObjectSpec:
        return self.scene.objects[0]

    @property
    def labels(self) -> Dict[str, Any]:
        """Ground truth: background kind and colours, object size, category, shape, colour and cell."""
        obj, bg = self.object, self.scene.background
        return {"background": bg.kind, "background_colours": list(bg.colours), "size": obj.size,
                "category": "glyph" if obj.is_glyph else "shape", "shape": obj.shape, "colour": obj.colour,
                "position": spatial_phrase(obj.positions)}


def t2i_item(seed: int, index: int, resolution: int) -> T2IItem:
    """Item ``index`` of the benchmark ``seed`` at ``resolution`` (see the module docstring)."""
    seed, index = check_positive("seed", seed, allow_zero=True), check_positive("index", index, allow_zero=True)
    resolution = check_resolution(resolution)
    for attempt in range(_MAX_ATTEMPTS):
        scene = sample_scene(np.random.default_rng([seed, index, attempt]), max_objects=1)
        if scene.objects[0].count == 1:
            break
    else:  # (2/3)^200: unreachable in practice
        raise RuntimeError(f"t2i item {index}: no single-instance scene in {_MAX_ATTEMPTS} draws")
    rendered = render(scene, resolution)
    image = torch.from_numpy(rendered.image)
    return T2IItem(index, scene, rendered.caption_full, image, check(scene, image)["checks"])


def t2i_items(n: int = DEFAULT_ITEMS, *, resolution: int = 32, seed: int = DEFAULT_BENCH_SEED) -> List[T2IItem]:
    """``n`` items, deterministic in (seed, index, resolution)."""
    n = check_positive("n", n)
    return [t2i_item(seed, i, resolution) for i in range(n)]


# -- checks ------------------------------------------------------------------------------------


def _rgb(name: str) -> np.ndarray:
    return np.asarray(COLOUR_RGB[name], dtype=np.float64) / 255


def _background_entries(kind: str, colour: str) -> np.ndarray:
    """(E, 3) in [0, 1]: the colours a background of ``kind`` in ``colour`` is painted with (see
    `world._render_background`): the colour itself (plain, stripes); the gradient's ramp from 35 %
    lighter to 0.6×; the noise's grey offsets (±0.3 clipped, about three standard deviations); the
    painting's tints (0.8–1× plus 0–0.15)."""
    c = _rgb(colour)
    if kind == "gradient":
        light = c + (1 - c) * 0.35
        entries = [light + (0.6 * c - light) * t for t in np.linspace(0, 1, 11)]
    elif kind == "noise":
        entries = [np.clip(c + k, 0, 1) for k in np.linspace(-0.3, 0.3, 13)]
    elif kind == "painting":
        entries = [np.clip(c * a + b, 0, 1) for a in (0.8, 0.9, 1.0) for b in (0.0, 0.075, 0.15)]
    else:
        entries = [c]
    return np.stack(entries)

_BACKGROUND_PALETTES = {k: {c: torch.from_numpy(_background_entries(k, c) * 2 - 1).float() for c in COLOURS}
                        for k in BACKGROUNDS}


def _background_palette(kind: str) -> Dict[str, torch.Tensor]:
    """Per named colour, what a background of ``kind`` paints with it ((E, 3) in [−1, 1])."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"kind must be one of {BACKGROUNDS}, got {kind!r}")
    return _BACKGROUND_PALETTES[kind]


def border_ring(n: int) -> np.ndarray:
    """(n, n) bool: the outer n/16 pixels of each side (2 at 32 px). The world keeps every object's
    bounding circle (1.25 radii) off the border, so at most a few fringe pixels of an object reach it."""
    width = max(1, round(n / 16))
    ring = np.ones((n, n), dtype=bool)
    ring[width: n - width, width: n - width] = False
    return ring


def _ring_pixels(image: torch.Tensor) -> torch.Tensor:
    return image.float()[:, torch.from_numpy(border_ring(image.shape[-1]))].T  # (P, 3)


def _mixes(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """(A·B·steps, 3): every mix (1 − t)·a_i + t·b_j of the entries of ``a`` and ``b``."""
    t = torch.linspace(0, 1, steps)[None, None, :, None]
    return (a[:, None, None] + (b[None, :, None] - a[:, None, None]) * t).reshape(-1, 3)


def background_colours(image: torch.Tensor, kind: str) -> Dict[str, Any]:
    """The background's named colour(s) seen on the border ring of ``image``, for a background of ``kind``.

    One-colour kinds (plain, gradient, noise): each ring pixel votes for the colour whose palette
    (`_background_palette`) holds its nearest entry; "colours" = [the top vote]. Two-colour kinds
    (stripes, painting — whose pixels are mixes: anti-aliased or blurred stripe edges, a painting's
    blotches laid over the two colours' even mix): each pair of colours scores the share of ring
    pixels within PAIR_TOLERANCE of a mix of their palettes; the best pair (ties: the lower mean
    distance) is ordered by how many ring pixels each member's palette is the nearer to.
    Returns {"dominant": first colour, "colours": [...], "shares": {colour or "a+b": share}}.
    """
    _check_image(image)
    pixels = _ring_pixels(image)
    palette = _background_palette(kind)
    if kind not in ("stripes", "painting"):
        entries = torch.cat([palette[c] for c in COLOURS])
        owner = torch.arange(len(COLOURS)).repeat_interleave(len(entries) // len(COLOURS))
        nearest = owner[torch.cdist(pixels, entries).argmin(dim=1)]
        counts = torch.bincount(nearest, minlength=len(COLOURS)).double() / len(pixels)
        order = torch.argsort(counts, descending=True, stable=True).tolist()
        return {"dominant": COLOURS[order[0]], "colours": [COLOURS[order[0]]],
                "shares": {COLOURS[i]: round(float(counts[i]), 4) for i in order if counts[i] > 0}}
    pairs, start, direction = _pair_segments(kind)
    d = _segment_distances(pixels, start, direction).view(len(pixels), len(pairs), -1).amin(dim=-1)  # (P, pairs)
    share = (d <= PAIR_TOLERANCE).double().mean(dim=0)
    ranked = sorted(range(len(pairs)), key=lambda k: (-float(share[k]), float(d[:, k].mean())))
    a, b = pairs[ranked[0]]
    nearer_a = float((torch.cdist(pixels, palette[a]).amin(dim=1) <= torch.cdist(pixels, palette[b]).amin(dim=1))
                     .double().mean())
    pair = [a, b] if nearer_a >= 0.5 else [b, a]
    return {"dominant": pair[0], "colours": pair,
            "shares": {"+".join(pairs[k]): round(float(share[k]), 4) for k in ranked[:3]}}


def _segment_distances(points: torch.Tensor, start: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """(P, S): the distance from each point p to each segment {s + t·d : t in [0, 1]} — p as a mix of
    the segment's ends. With w = p − s, t* = clamp(w·d / |d|², 0, 1) and the distance² is
    |w|² − 2 t*·(w·d) + t*²|d|², each term a matrix product (w·d = p·d − s·d,
    |w|² = |p|² − 2 p·s + |s|²), so no (P, S, 3) temporary is built."""
    wd = points @ direction.T - (start * direction).sum(-1)
    ww = points.square().sum(-1, keepdim=True) - 2 * points @ start.T + start.square().sum(-1)
    dd = direction.square().sum(-1)
    t = (wd / dd.clamp_min(1e-12)).clamp(0, 1)
    return (ww - 2 * t * wd + t.square() * dd).clamp_min(0).sqrt()


@functools.lru_cache(maxsize=None)
def _pair_segments(kind: str) -> Tuple[List[Tuple[str, str]], torch.Tensor, torch.Tensor]:
    """Every pair of colours, and per pair the segments (start, direction) from each entry of the
    first colour's palette to each entry of the second's, pair after pair (equally many per pair)."""
    palette = _background_palette(kind)
    pairs = [(a, b) for i, a in enumerate(COLOURS) for b in COLOURS[i + 1:]]
    start = torch.cat([palette[a].repeat_interleave(len(palette[b]), dim=0) for a, b in pairs])
    end = torch.cat([palette[b].repeat(len(palette[a]), 1) for a, b in pairs])
    return pairs, start, end - start


def _ring_colours(image: torch.Tensor) -> torch.Tensor:
    """(R, 3): the colours of the border ring that at least 3 % of its pixels (and at least 3) share
    to within half the foreground threshold — the background's, not the fringe of an object that
    reaches the ring — rounded to 1/32 and deduplicated."""
    pixels = _ring_pixels(image)
    pixels = pixels[:: max(1, len(pixels) // 512)]  # a bounded pairwise count at any resolution
    close = torch.cdist(pixels, pixels, p=math.inf) <= FOREGROUND_THRESHOLD / 2  # max over channels
    kept = pixels[close.sum(dim=1) >= max(3, int(0.03 * len(pixels)))]
    if len(kept) == 0:  # no colour repeats around the border: use all of it
        kept = pixels
    return torch.unique(torch.round(kept * 32) / 32, dim=0)


def estimated_background(image: torch.Tensor, kind: str, colours: Optional[Sequence[str]] = None) -> torch.Tensor:
    """(B, 3): the colours the background is estimated to contain — those of the border ring
    (`_ring_colours`), plus the whole background palette of ``kind`` for the background's colours
    (``colours``, default: `background_colours`) and, for two, every mix of them: this covers the
    gradient, noise and blotch colours the interior shows but the ring may not."""
    colours = background_colours(image, kind)["colours"] if colours is None else colours
    palette = _background_palette(kind)
    extra = [palette[c] for c in colours]
    if len(colours) == 2:
        extra.append(_mixes(palette[colours[0]], palette[colours[1]], 9))
    return torch.cat([_ring_colours(image), *extra])


def object_region(image: torch.Tensor, background: torch.Tensor) -> np.ndarray:
    """(H, W) bool: the object's pixels — those farther than FOREGROUND_THRESHOLD (max over channels)
    from every background colour, within the largest 8-connected blob of their 3×3 closing (the
    closing joins the bands a texture whose accent is near the background splits an object into;
    the largest blob drops specks elsewhere)."""
    foreground = _foreground(image, background)
    if not foreground.any():
        return foreground
    labels = component_labels(closing(foreground))
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    return foreground & (labels == values[counts.argmax()])


def _foreground(image: torch.Tensor, background: torch.Tensor) -> np.ndarray:
    """(H, W) bool: the pixels farther than FOREGROUND_THRESHOLD (max over channels) from every background colour."""
    pixels = image.float().permute(1, 2, 0).reshape(-1, 3)
    far = torch.cdist(pixels, background.float(), p=math.inf).amin(dim=1)  # max over channels, min over colours
    return (far > FOREGROUND_THRESHOLD).view(image.shape[-2:]).numpy()


def _dilate(region: np.ndarray, steps: int = 1) -> np.ndarray:
    """3×3 dilation, ``steps`` times."""
    h, w = region.shape
    for _ in range(steps):
        padded = np.pad(region, 1)
        region = np.max([padded[dy: dy + h, dx: dx + w] for dy in range(3) for dx in range(3)], axis=0)
    return region


def local_background(image: torch.Tensor, region: np.ndarray) -> torch.Tensor:
    """(B, 3): the colours around the object — the ring of pixels two steps out from the region's
    3×3 closing (one step out still holds faint fringe), rounded to 1/16, the MAX_COLOURS most
    common: what the object's anti-aliased fringe is mixed with. Empty when the object fills the image."""
    core = _dilate(closing(region))
    around = torch.from_numpy(_dilate(core) & ~core)
    colours, counts = torch.unique(torch.round(image.float()[:, around].T * 16) / 16, dim=0, return_counts=True)
    return colours[torch.argsort(counts, descending=True, stable=True)[:MAX_COLOURS]]


def object_colour(image: torch.Tensor, region: np.ndarray, background: torch.Tensor) -> str:
    """The named colour whose object palette (`diffrt.eval._shared.OBJECT_PALETTES`: base, texture accents, metallic
    shades and highlights) best explains the region: per pixel, the distance to the nearest mix of a
    palette entry with one of the ``background`` colours (a fringe pixel is such a mix; see
    `local_background`); per colour, the median over the region; the lowest wins —
    `diffrt.eval.attributes.dominant_colour` with a set of background colours in place of a background image."""
    pixels = image.float()[:, torch.from_numpy(region)].T  # (P, 3)
    if len(pixels) == 0:
        raise ValueError("region is empty")
    pixels = pixels[:: -(-len(pixels) // MAX_PIXELS)]  # an evenly spread subset: bounded cost, the same median
    background = background.float()
    # segments from every background colour to every palette entry, colour after colour
    sizes = [len(OBJECT_PALETTES[c]) * len(background) for c in COLOURS]
    start = torch.cat([background.repeat(len(OBJECT_PALETTES[c]), 1) for c in COLOURS])
    end = torch.cat([OBJECT_PALETTES[c].repeat_interleave(len(background), dim=0) for c in COLOURS])
    per_colour = _segment_distances(pixels, start, end - start).split(sizes, dim=1)
    scores = [float(d.amin(dim=1).median()) for d in per_colour]
    return COLOURS[int(np.argmin(scores))]


def box_centre(region: np.ndarray) -> Tuple[float, float]:
    """(x, y) in [0, 1]: the centre of the region's bounding box. The world centres every shape and
    glyph in its box (a triangle's centroid, by contrast, lies 0.29 radii below its position), so
    this is the object's position to within a pixel."""
    n = region.shape[-1]
    ys, xs = np.nonzero(region)
    return (float(xs.min() + xs.max() + 1) / (2 * n), float(ys.min() + ys.max() + 1) / (2 * n))


@functools.lru_cache(maxsize=None)
def _extents(shape: str) -> Tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the shape's mask extent around its position, in units of its radius
    (measured on a large rendering, so it is exact to a fraction of a percent)."""
    n, r = 256, 0.3
    obj = ObjectSpec(shape, "black", COLOUR_RGB["black"], "solid", "large", r, ((0.5, 0.5),))
    mask = render(SceneSpec(BackgroundSpec("plain", ("white",), 0.0, 0.1, 0), (obj,)), n).objects[0].mask
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = (np.array([xs.min(), xs.max() + 1, ys.min(), ys.max() + 1]) / n - 0.5) / r
    return float(x0), float(x1), float(y0), float(y1)


def _hypothesis_mask(shape: str, x: float, y: float, radius: float, n: int) -> np.ndarray:
    obj = ObjectSpec(shape, "black", COLOUR_RGB["black"], "solid", "large", radius, ((x, y),))
    return render(SceneSpec(BackgroundSpec("plain", ("white",), 0.0, 0.1, 0), (obj,)), n).objects[0].mask


def shape_scores(region: np.ndarray, *, scales: Sequence[float] = (0.85, 1.0, 1.15)) -> Dict[str, float]:
    """Per shape and glyph, the best IoU of the region with that shape rendered to fill the region's
    bounding box (radius from the box's width and height and the shape's extents, times each of
    ``scales``: the region's anti-aliased fringe makes the box up to a pixel larger than a mask)."""
    n = region.shape[-1]
    ys, xs = np.nonzero(region)
    w, h = (xs.max() + 1 - xs.min()) / n, (ys.max() + 1 - ys.min()) / n
    cx, cy = box_centre(region)
    scores = {}
    for shape in SHAPES + GLYPHS:
        x0, x1, y0, y1 = _extents(shape)
        radius = (w / (x1 - x0) + h / (y1 - y0)) / 2
        best = 0.0
        for s in scales:
            r = float(np.clip(radius * s, 0.5 / n, 0.45))
            # place the shape so that its box, not its position, is centred on the region's box
            hyp = _hypothesis_mask(shape, cx - (x0 + x1) / 2 * r, cy - (y0 + y1) / 2 * r, r, n)
            union = (hyp | region).sum()
            best = max(best, float((hyp & region).sum() / union) if union else 0.0)
        scores[shape] = best
    return scores


def position_matches(centre: Sequence[float], phrase: str, n: int) -> bool:
    """Whether ``centre`` (x, y in [0, 1]) lies in the 3×3 cell ``phrase`` names (`spatial_phrase`),
    give or take POSITION_MARGIN pixels: a box found from whole pixels places the centre to within
    about a pixel, so an object on a cell border may show on either side of it."""
    m = POSITION_MARGIN / n
    return any(spatial_phrase([(centre[0] + dx * m, centre[1] + dy * m)]) == phrase
               for dx in (-1, 0, 1) for dy in (-1, 0, 1))


def predict(image: torch.Tensor, kind: str, *, shapes: bool = True) -> Dict[str, Any]:
    """What ``image`` (3, H, W) in [−1, 1] shows, given the prompted background ``kind``: background
    colour (`background_colours`' dominant one), object colour (`object_colour` of `object_region`
    over its `local_background`), position phrase and box centre, and with ``shapes`` the shape
    (`shape_scores`' best, None on a tie). Everything but the background is None when no object
    stands out."""
    _check_image(image)
    seen = background_colours(image, kind)
    out: Dict[str, Any] = {"background": seen["dominant"], "background_shares": seen["shares"], "colour": None,
                           "position": None, "centre": None, "shape": None, "area": 0}
    background = estimated_background(image, kind, seen["colours"])
    region = object_region(image, background)
    if not region.any():
        return out
    centre = box_centre(region)
    around = local_background(image, region)
    out.update(colour=object_colour(image, region, around if len(around) else background),
               position=spatial_phrase([centre]), centre=list(centre), area=int(region.sum()))
    if shapes:
        out["shape"] = best_shape(region)
    return out


def best_shape(region: np.ndarray) -> Optional[str]:
    """The shape or glyph with the highest `shape_scores` for ``region``; None on a tie (shapes whose
    renderings fit equally well are not told apart here)."""
    scores = shape_scores(region)
    ranked = sorted(scores, key=scores.get, reverse=True)
    return ranked[0] if scores[ranked[0]] > scores[ranked[1]] else None


def check(scene: SceneSpec, image: torch.Tensor, *, shapes: bool = True) -> Dict[str, Any]:
    """Per check (CHECKS), whether ``image`` shows the single-object ``scene``; plus the predictions."""
    if len(scene.objects) != 1 or scene.objects[0].count != 1:
        raise ValueError("scene must hold exactly one object with one instance")
    obj, bg = scene.objects[0], scene.background
    p = predict(image, bg.kind, shapes=shapes)
    accepted = bg.colours if bg.kind in ("stripes", "painting") else bg.colours[:1]
    result = {"background": p["background"] in accepted, "colour": p["colour"] == obj.colour,
              "position": p["centre"] is not None and position_matches(p["centre"], spatial_phrase(obj.positions),
                                                                       image.shape[-1]),
              "shape": shapes and p["shape"] == obj.shape}
    result["colour_position"] = result["colour"] and result["position"]
    return {"checks": result, "predicted": p}


def _check_image(image) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3 or \
            image.shape[1] != image.shape[2]:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, N, N) tensor in [-1, 1], got {shape}")
    check_resolution(image.shape[-1])


# -- two-object prompts ------------------------------------------------------------------------


PAIR_CHECKS = ("background", "colour_first", "colour_second", "both_colours", "shape_first", "shape_second",
               "relation", "relation_given_colours")
# A two-object item's generator is default_rng([seed, index, attempt, TWO_OBJECT_STREAM]): a fourth
# word, non-zero, so that it is none of the single-object items' generators ([seed, index, attempt],
# which numpy's SeedSequence pads with zeros) — the single-object set stays as it was.
TWO_OBJECT_STREAM = 2
# The blobs an object may be found in: the two objects and one fragment (a thin glyph's strokes can
# fall apart into pieces). On the world's own renderings at 32 px both colours are found in 0.94 of
# 300 items with two blobs and 0.95 with three or more; the fewer blobs a model gets to hit, the better.
MAX_BLOBS = 3
_MAX_PAIR_ATTEMPTS = 1000  # a draw has two single-instance objects with probability about 1/18


def _cell(phrase: str) -> Tuple[int, int]:
    """(column, row) in 0..2 of the 3×3 cell a `spatial_phrase` names, read from its words."""
    words = phrase.split()
    column = 0 if "left" in words else 2 if "right" in words else 1
    row = 0 if "top" in words else 2 if "bottom" in words else 1
    return column, row


def implied_relation(scene: SceneSpec) -> Dict[str, str]:
    """Where the first object lies relative to the second, as far as the Full caption says: its two
    cells (`spatial_phrase`) order them along an axis when they differ in column ("left of" / "right
    of") or row ("above" / "below"). Empty when both objects are in the same cell."""
    (c1, r1), (c2, r2) = (_cell(spatial_phrase(o.positions)) for o in scene.objects)
    out = {}
    if c1 != c2:
        out["horizontal"] = "left of" if c1 < c2 else "right of"
    if r1 != r2:
        out["vertical"] = "above" if r1 < r2 else "below"
    return out


def relation_holds(relation: Dict[str, str], first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether centres ``first`` and ``second`` (x, y in [0, 1], y down) are ordered as ``relation`` says
    (strictly, along each axis it names)."""
    holds = {"left of": first[0] < second[0], "right of": first[0] > second[0],
             "above": first[1] < second[1], "below": first[1] > second[1]}
    return all(holds[v] for v in relation.values())


@dataclass
class TwoObjectItem:
    index: int
    scene: SceneSpec  # one background, two objects with one instance each
    prompt: str  # the scene's Full caption, naming both objects and where each is
    image: torch.Tensor  # (3, H, W) in [−1, 1]: the ground-truth rendering
    truth_checks: Dict[str, Optional[bool]]  # `check_pair` on the ground-truth rendering: each metric's ceiling

    @property
    def relation(self) -> Dict[str, str]:
        return implied_relation(self.scene)

    @property
    def shape_checkable(self) -> Tuple[bool, bool]:
        """Per object, whether the ground truth passes its shape check at this resolution."""
        return bool(self.truth_checks["shape_first"]), bool(self.truth_checks["shape_second"])

    @property
    def labels(self) -> Dict[str, Any]:
        bg = self.scene.background
        return {"background": bg.kind, "background_colours": list(bg.colours),
                "objects": [{"shape": o.shape, "category": "glyph" if o.is_glyph else "shape", "colour": o.colour,
                             "size": o.size, "position": spatial_phrase(o.positions)} for o in self.scene.objects],
                "relation": self.relation}


def two_object_item(seed: int, index: int, resolution: int) -> TwoObjectItem:
    """Two-object item ``index`` of the benchmark ``seed``: the world's own sampler
    (`sample_scene`, at most two objects) redrawn until it holds two objects of one instance each."""
    seed, index = check_positive("seed", seed, allow_zero=True), check_positive("index", index, allow_zero=True)
    resolution = check_resolution(resolution)
    for attempt in range(_MAX_PAIR_ATTEMPTS):
        scene = sample_scene(np.random.default_rng([seed, index, attempt, TWO_OBJECT_STREAM]), max_objects=2)
        if len(scene.objects) == 2 and all(o.count == 1 for o in scene.objects):
            break
    else:  # (17/18)^1000: unreachable in practice
        raise RuntimeError(f"two-object item {index}: no scene with two single-instance objects in "
                           f"{_MAX_PAIR_ATTEMPTS} draws")
    rendered = render(scene, resolution)
    image = torch.from_numpy(rendered.image)
    return TwoObjectItem(index, scene, rendered.caption_full, image, check_pair(scene, image)["checks"])


def two_object_items(n: int, *, resolution: int = 32, seed: int = DEFAULT_BENCH_SEED) -> List[TwoObjectItem]:
    """``n`` two-object items, deterministic in (seed, index, resolution)."""
    n = check_positive("n", n)
    return [two_object_item(seed, i, resolution) for i in range(n)]


def object_blobs(image: torch.Tensor, background: torch.Tensor, limit: int = MAX_BLOBS) -> List[np.ndarray]:
    """The foreground's blobs, largest first: the 8-connected components of the 3×3 closing of the
    pixels far from every ``background`` colour (as in `object_region`), each as its foreground
    pixels; the ``limit`` largest (ties: the one whose last pixel comes first in raster order)."""
    foreground = _foreground(image, background)
    labels = component_labels(closing(foreground))
    values, counts = np.unique(labels[foreground], return_counts=True)
    order = sorted(range(len(values)), key=lambda k: (-counts[k], values[k]))
    return [foreground & (labels == values[k]) for k in order[:limit]]


def check_pair(scene: SceneSpec, image: torch.Tensor, *, shapes: bool = True) -> Dict[str, Any]:
    """Per check (PAIR_CHECKS but the conditional one), whether ``image`` shows the two-object ``scene``.

    The blobs (`object_blobs`) are each given a colour (`object_colour` over its `local_background`);
    an object is found when a blob has its colour (the world gives the two objects different
    colours), and is then that blob — the largest such. colour_first / colour_second: the object is
    found; both_colours: both are; shape_first / shape_second: the object's blob has its shape
    (`best_shape`); relation: both are found and their blobs' box centres are ordered as the caption
    implies (`implied_relation`; None when the caption implies no order). The predictions come along.
    """
    if len(scene.objects) != 2 or any(o.count != 1 for o in scene.objects):
        raise ValueError("scene must hold exactly two objects with one instance each")
    _check_image(image)
    bg = scene.background
    seen = background_colours(image, bg.kind)
    background = estimated_background(image, bg.kind, seen["colours"])
    blobs = []
    for region in object_blobs(image, background):
        around = local_background(image, region)
        blobs.append({"region": region, "area": int(region.sum()), "centre": list(box_centre(region)),
                      "colour": object_colour(image, region, around if len(around) else background)})
    accepted = bg.colours if bg.kind in ("stripes", "painting") else bg.colours[:1]
    checks: Dict[str, Optional[bool]] = {"background": seen["dominant"] in accepted}
    found = []
    for name, obj in zip(("first", "second"), scene.objects):
        blob = next((b for b in blobs if b["colour"] == obj.colour), None)
        shape = best_shape(blob["region"]) if shapes and blob is not None else None
        checks[f"colour_{name}"] = blob is not None
        checks[f"shape_{name}"] = shape is not None and shape == obj.shape
        found.append(None if blob is None else {"centre": blob["centre"], "area": blob["area"], "shape": shape})
    checks["both_colours"] = checks["colour_first"] and checks["colour_second"]
    relation = implied_relation(scene)
    checks["relation"] = (None if not relation else
                          checks["both_colours"] and relation_holds(relation, found[0]["centre"], found[1]["centre"]))
    predicted = {"background": seen["dominant"], "background_shares": seen["shares"],
                 "blobs": [{k: b[k] for k in ("colour", "centre", "area")} for b in blobs], "objects": found}
    return {"checks": checks, "predicted": predicted}


def summarize_pairs(records: Sequence[Dict[str, Any]], key: str = "checks") -> Dict[str, Any]:
    """Accuracy of each of PAIR_CHECKS over the two-object records, with its 95 % Wilson interval
    ("ci95") and the number of records it is scored on ("n_scored"): shape_first / shape_second
    over the records whose object is shape-checkable, relation over those whose caption implies an
    order, relation_given_colours (the relation among the records where both colours are right)
    over those of them whose ``key`` checks found both colours."""
    def scored(r, c) -> bool:
        if c in ("shape_first", "shape_second"):
            return bool(r["shape_checkable"][c == "shape_second"])
        if c == "relation":
            return bool(r["labels"]["relation"])
        if c == "relation_given_colours":
            return bool(r["labels"]["relation"]) and bool(r[key]["both_colours"])
        return True

    out: Dict[str, Any] = {"ci95": {}, "n_scored": {}}
    for c in PAIR_CHECKS:
        share = proportion([r[key]["relation" if c == "relation_given_colours" else c]
                            for r in records if scored(r, c)])
        out[c], out["ci95"][c], out["n_scored"][c] = share["value"], share["ci95"], share["n"]
    out["n"] = len(records)
    return out


# -- aggregation -------------------------------------------------------------------------------


def summarize(records: Sequence[Dict[str, Any]], key: str = "checks") -> Dict[str, Any]:
    """Accuracy of each check over the records (shape: over the shape-checkable ones only), overall,
    per background kind, size and object category, and for medium and large objects together
    ("by_size_group": shapes at 32 px are readable from medium size up); each cell's "ci95" holds
    every accuracy's 95 % Wilson interval. ``key`` picks the model's checks or the ground truth's
    ("truth_checks")."""
    def mean(rows) -> Dict[str, Any]:
        out: Dict[str, Any] = {"ci95": {}}
        for c in CHECKS:
            chosen = [r for r in rows if c != "shape" or r["shape_checkable"]]
            share = proportion([r[key][c] for r in chosen])
            out[c], out["ci95"][c] = share["value"], share["ci95"]
        out["n"], out["n_shape"] = len(rows), sum(bool(r["shape_checkable"]) for r in rows)
        return out

    summary: Dict[str, Any] = {"overall": mean(records)}
    for name, values in BREAKDOWNS.items():
        summary[f"by_{name}"] = {v: mean(rows) for v in values
                                 if (rows := [r for r in records if r["labels"][name] == v])}
    summary["by_size_group"] = {"+".join(group): mean(rows) for group in SIZE_GROUPS
                                if (rows := [r for r in records if r["labels"]["size"] in group])}
    # Shapes and glyphs apart within each group: 6 shapes (chance 1/6) against 14 glyphs in a 5×7 font
    # whose strokes are a pixel or two wide at 32 px, so the pooled figure mixes two different tasks.
    summary["by_size_group_category"] = {
        "+".join(group): {cat: mean(rows) for cat in CATEGORIES
                          if (rows := [r for r in records
                                       if r["labels"]["size"] in group and r["labels"]["category"] == cat])}
        for group in SIZE_GROUPS}
    return summary


def shape_confusion(records: Sequence[Dict[str, Any]], sizes: Sequence[str] = SIZE_GROUPS[0]) -> Dict[str, Dict[str, int]]:
    """How often each prompted shape (geometric shapes only, shape-checkable items of ``sizes``) was read
    back as each shape: {prompted: {read: count}}, "none" where no object was found. Shows which shapes
    the model draws as which (a star drawn as a blob reads as a circle)."""
    table: Dict[str, Dict[str, int]] = {shape: {} for shape in SHAPES}
    for r in records:
        if r["shape_checkable"] and r["labels"]["size"] in sizes and r["labels"]["category"] == "shape":
            read = r["predicted"]["shape"] or "none"
            row = table[r["labels"]["shape"]]
            row[read] = row.get(read, 0) + 1
    return {shape: row for shape, row in table.items() if row}


# -- what the text encoder passes on -----------------------------------------------------------


SENSITIVITY_ATTRIBUTES = ("colour", "position", "shape", "background")
_CELL_CENTRES = tuple((x, y) for y in (1 / 6, 1 / 2, 5 / 6) for x in (1 / 6, 1 / 2, 5 / 6))


def _next(values: Sequence[str], value: str) -> str:
    return values[(values.index(value) + 1) % len(values)]


def changed_scene(scene: SceneSpec, attribute: str) -> SceneSpec:
    """``scene`` (one object, one instance) with only ``attribute`` changed, so that its Full caption
    differs in that attribute's words alone: the object's colour, its 3×3 cell, its shape (a glyph
    stays a glyph) or the background's colours, each the next one in the world's list (for the
    background, the next ones that are neither a background colour nor the object's)."""
    obj, bg = scene.objects[0], scene.background
    if attribute == "colour":
        colour = _next(COLOURS, obj.colour)
        obj = dataclasses.replace(obj, colour=colour, rgb=COLOUR_RGB[colour])
    elif attribute == "position":
        cell = next(i for i, c in enumerate(_CELL_CENTRES) if spatial_phrase([c]) == spatial_phrase(obj.positions))
        obj = dataclasses.replace(obj, positions=(_CELL_CENTRES[(cell + 1) % len(_CELL_CENTRES)],))
    elif attribute == "shape":
        obj = dataclasses.replace(obj, shape=_next(GLYPHS if obj.is_glyph else SHAPES, obj.shape))
    elif attribute == "background":  # every colour changes: the check accepts either of two
        start = COLOURS.index(bg.colours[0])
        rotated = COLOURS[start + 1:] + COLOURS[:start + 1]
        fresh = [c for c in rotated if c not in bg.colours and c != obj.colour]
        bg = dataclasses.replace(bg, colours=tuple(fresh[:len(bg.colours)]))
    else:
        raise ValueError(f"attribute must be one of {SENSITIVITY_ATTRIBUTES}, got {attribute!r}")
    return dataclasses.replace(scene, background=bg, objects=(obj,))


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@torch.no_grad()
def text_sensitivity(text_encoder, scenes: Sequence[SceneSpec]) -> Dict[str, Dict[str, float]]:
    """How far the text encoder's outputs move when a Full caption changes in one attribute: per
    attribute, the mean cosine distance (1 − cos) between the captions' pooled embeddings (what the
    UNet adds to its time embedding) and between their token states averaged over the caption's
    tokens (a summary of what its cross-attention reads), each with the 95 % bootstrap interval of
    its mean over the scenes ("pooled_ci95", "tokens_ci95"). A distance near 0 means the encoder all
    but drops the attribute, and the model can learn it only from the one token that names it."""
    if not scenes:
        raise ValueError("text_sensitivity needs at least one scene")
    base = text_encoder([caption_full(sc) for sc in scenes])

    def summary(out):
        mask = out["context_mask"].unsqueeze(-1).to(out["context"].dtype)
        return out["pooled"], (out["context"] * mask).sum(1) / mask.sum(1)

    pooled, tokens = summary(base)
    result = {}
    for attribute in SENSITIVITY_ATTRIBUTES:
        changed = [changed_scene(sc, attribute) for sc in scenes]
        other_pooled, other_tokens = summary(text_encoder([caption_full(sc) for sc in changed]))
        d_pooled, d_tokens = _cosine_distance(pooled, other_pooled), _cosine_distance(tokens, other_tokens)
        result[attribute] = {"pooled": d_pooled.mean().item(), "tokens": d_tokens.mean().item(),
                             "pooled_ci95": bootstrap_mean_interval(d_pooled.tolist()),
                             "tokens_ci95": bootstrap_mean_interval(d_tokens.tolist())}
    return result


# -- running a model ---------------------------------------------------------------------------


@torch.no_grad()
def run_t2i(bundle, *, items: int = DEFAULT_ITEMS, steps: int = 25, guidance: float = 5.0, seed: int = 0,
            batch_size: int = 25, bench_seed: int = DEFAULT_BENCH_SEED, dynamic_threshold: Optional[float] = None,
            pairs: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Sample ``items`` single-object prompts and ``pairs`` two-object prompts (default: as many as
    ``items``; 0 skips them) with the bundle's base model as text-to-image and check them.

    DDIM (η = 0, trailing spacing) for ``steps`` steps with classifier-free guidance weight
    ``guidance`` (1 = no guidance), dynamic thresholding at percentile ``dynamic_threshold`` (None:
    off — at moderate guidance it pulls the world's saturated colours towards grey); single-object
    sample i starts from noise seeded by (seed, i), two-object sample i from (seed, i,
    TWO_OBJECT_STREAM). Items are rendered at the base model's resolution.

    Returns {"config", "summary" (the model's accuracies, `summarize`), "ground_truth" (the same
    checks on the ground-truth renderings: each metric's ceiling), "shape_confusion" (medium and large
    shapes: prompted against read back, `shape_confusion`), "text_sensitivity", "records"
    (per item: prompt, labels, predictions and checks), "images" ((N, 3, H, W) samples in [−1, 1];
    not JSON), and with pairs "two_object" ({"summary", "ground_truth"} by `summarize_pairs`,
    "records") and "pair_images" (not JSON)}.
    """
    items = check_positive("items", items)
    pairs = items if pairs is None else check_positive("pairs", pairs, allow_zero=True)
    steps = check_positive("steps", steps)
    batch_size = check_positive("batch_size", batch_size)
    seed = check_positive("seed", seed, allow_zero=True)
    bench_seed = check_positive("bench_seed", bench_seed, allow_zero=True)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    for part in ("clip", "base"):
        if not bundle.has(part):
            raise FileNotFoundError(f"{bundle.directory} has no '{part}' model, which the t2i evaluation needs")
    unet = bundle.unet("base")
    side = unet.config.image_size
    schedule = SamplingSchedule.ddim(bundle.noise_schedule("base"), steps, spacing="trailing")
    weight = next(unet.parameters())
    device, dtype = weight.device, weight.dtype
    tokenizer = bundle.text_encoder.tokenizer
    truncated = 0

    def sample(batch, keys) -> torch.Tensor:
        nonlocal truncated
        prompts = [it.prompt for it in batch]
        truncated += sum(len(tokenizer.encode(p)) > tokenizer.max_length - 2 for p in prompts)  # <bos>, <eos>
        noise = torch.stack([torch.randn(3, side, side, generator=seeded_generator(seed, *k)) for k in keys])
        cond = _to(bundle.text_to_image_condition("base", prompts), device)
        uncond = _to(bundle.text_to_image_condition("base", [""] * len(batch)), device)
        x = ddim_sample(unet, noise.to(device=device, dtype=dtype), schedule, cond=cond, uncond=uncond,
                        guidance=float(guidance), dynamic_threshold=dynamic_threshold, progress=False)
        return x.float().clamp(-1, 1).cpu()

    records: List[Dict[str, Any]] = []
    samples: List[torch.Tensor] = []
    scenes: List[SceneSpec] = []
    pair_records: List[Dict[str, Any]] = []
    pair_samples: List[torch.Tensor] = []
    bar = tqdm(total=items + pairs, desc="t2i", unit="image", disable=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted in the config, not printed per batch
        for start in range(0, items, batch_size):
            batch = [t2i_item(bench_seed, i, side) for i in range(start, min(start + batch_size, items))]
            scenes += [it.scene for it in batch]
            images = sample(batch, [(it.index,) for it in batch])
            for it, image in zip(batch, images):
                result = check(it.scene, image)
                records.append({"index": it.index, "prompt": it.prompt, "labels": it.labels,
                                "shape_checkable": it.shape_checkable, "predicted": result["predicted"],
                                "checks": result["checks"], "truth_checks": it.truth_checks})
            samples.append(images)
            bar.update(len(batch))
        for start in range(0, pairs, batch_size):
            batch = [two_object_item(bench_seed, i, side) for i in range(start, min(start + batch_size, pairs))]
            images = sample(batch, [(it.index, TWO_OBJECT_STREAM) for it in batch])
            for it, image in zip(batch, images):
                result = check_pair(it.scene, image)
                pair_records.append({"index": it.index, "prompt": it.prompt, "labels": it.labels,
                                     "shape_checkable": list(it.shape_checkable), "predicted": result["predicted"],
                                     "checks": result["checks"], "truth_checks": it.truth_checks})
            pair_samples.append(images)
            bar.update(len(batch))
    bar.close()
    config = {"items": items, "pairs": pairs, "bench_seed": bench_seed, "seed": seed, "steps": steps,
              "guidance": guidance, "spacing": "trailing", "dynamic_threshold": dynamic_threshold,
              "batch_size": batch_size, "resolution": side, "foreground_threshold": FOREGROUND_THRESHOLD,
              "max_blobs": MAX_BLOBS, "prompts_truncated": truncated}
    sensitivity = text_sensitivity(bundle.text_encoder, scenes)
    result = {"config": config, "summary": summarize(records), "ground_truth": summarize(records, "truth_checks"),
              "shape_confusion": shape_confusion(records), "text_sensitivity": sensitivity, "records": records,
              "images": torch.cat(samples)}
    if pairs:
        result["two_object"] = {"summary": summarize_pairs(pair_records),
                                "ground_truth": summarize_pairs(pair_records, "truth_checks"),
                                "records": pair_records}
        result["pair_images"] = torch.cat(pair_samples)
    return result


def _to(cond: Dict[str, Any], device) -> Dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
