"""A procedural attribute–object–scene world in EditBench's categories, rendered at any resolution.

EditBench (Imagen Editor, Wang et al. 2023, §4) crosses attributes (colour, material, shape, size,
count), objects (common objects and text rendering) and scenes. Here: objects are geometric shapes
or glyphs (letters and digits from a 5×7 bitmap font defined below, so no font file is needed and
rendering is identical on every machine); attributes are colour, a material-like texture, size
class and count 1–3; scenes are backgrounds (plain, gradient, stripes, noise, painting-like
blotches).

A scene is a resolution-free description in normalised coordinates (x right, y down, [0, 1]);
`render` draws it at any H = W in [32, 256] with exact per-object masks and tight boxes, which
stand in for the paper's object detector. Sample i of seed s is drawn from its own generator
(`scene_at(s, i)`), so samples do not depend on the order they are drawn in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Vocabulary (exported so that evaluation can check attribute accuracy against it)
# ---------------------------------------------------------------------------------------------

COLOUR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "purple": (130, 50, 180),
    "pink": (245, 125, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: Tuple[str, ...] = tuple(COLOUR_RGB)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
LETTERS: Tuple[str, ...] = ("A", "E", "H", "K", "R", "S", "T", "X")
DIGITS: Tuple[str, ...] = ("2", "3", "4", "5", "7", "8")
GLYPHS: Tuple[str, ...] = LETTERS + DIGITS
TEXTURES: Tuple[str, ...] = ("solid", "striped", "dotted", "checkered", "metallic")
SIZES: Tuple[str, ...] = ("small", "medium", "large")
COUNTS: Tuple[int, ...] = (1, 2, 3)
BACKGROUNDS: Tuple[str, ...] = ("plain", "gradient", "stripes", "noise", "painting")

MIN_RESOLUTION, MAX_RESOLUTION = 32, 256

# Object half-extent as a fraction of the image side, per size class.
SIZE_RADIUS: Dict[str, Tuple[float, float]] = {"small": (0.07, 0.09), "medium": (0.11, 0.14), "large": (0.17, 0.21)}
# Every shape and glyph fits in a circle of BOUND·radius, so instances placed that far apart never touch.
BOUND = 1.25
GAP = 0.02  # extra clearance between instances (normalised) so anti-aliased edges never overlap
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

# 5×7 bitmap font: '#' is ink. Scaled up by exact area coverage in `_glyph_coverage`.
_FONT_5X7: Dict[str, Tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
}
_FONT_BITS = {ch: np.array([[c == "#" for c in row] for row in rows], dtype=np.float64) for ch, rows in _FONT_5X7.items()}


def _regular_star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Polygons in units of the object radius, centred on the object's position (y down).
_POLYGONS: Dict[str, np.ndarray] = {
    "square": np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]]),
    "triangle": np.array([[0.0, -0.87], [1.0, 0.87], [-1.0, 0.87]]),
    "diamond": np.array([[0.0, -1.0], [0.75, 0.0], [0.0, 1.0], [-0.75, 0.0]]),
    "star": _regular_star(5, 1.0, 0.45) + np.array([0.0, 0.1]),
    "cross": np.array([[-0.3, -0.95], [0.3, -0.95], [0.3, -0.3], [0.95, -0.3], [0.95, 0.3], [0.3, 0.3],
                       [0.3, 0.95], [-0.3, 0.95], [-0.3, 0.3], [-0.95, 0.3], [-0.95, -0.3], [-0.3, -0.3]]),
}
_CIRCLE_RADIUS = 0.92

# ---------------------------------------------------------------------------------------------
# Scene description
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One described object: `count` identical instances of a shape or glyph, at `positions`."""

    shape: str  # one of SHAPES, or a glyph from GLYPHS
    colour: str  # one of COLOURS
    rgb: Tuple[int, int, int]
    texture: str  # one of TEXTURES
    size: str  # one of SIZES
    radius: float  # half-extent, as a fraction of the image side
    positions: Tuple[Tuple[float, float], ...]  # instance centres (x, y) in [0, 1]

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def is_glyph(self) -> bool:
        return self.shape in _FONT_5X7

    @property
    def noun(self) -> str:
        """'circle', 'letter A' or 'digit 7'."""
        if not self.is_glyph:
            return self.shape
        return f"{'digit' if self.shape.isdigit() else 'letter'} {self.shape}"

    def labels(self) -> Dict[str, object]:
        """The ground-truth attributes, for attribute-accuracy evaluation."""
        return {"shape": self.shape, "kind": "glyph" if self.is_glyph else "shape", "colour": self.colour,
                "texture": self.texture, "size": self.size, "count": self.count,
                "position": spatial_phrase(self.positions)}


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str  # one of BACKGROUNDS
    colours: Tuple[str, ...]  # one colour (plain, gradient, noise) or two (stripes, painting)
    angle: float  # direction of the gradient or the stripes, radians
    period: float  # stripe period, as a fraction of the image side
    seed: int  # drives the noise and the painting's blotches, so they too are resolution-free


@dataclass(frozen=True)
class SceneSpec:
    background: BackgroundSpec
    objects: Tuple[ObjectSpec, ...]


# ---------------------------------------------------------------------------------------------
# Captions: Mask-Simple, Mask-Rich and Full, as in EditBench
# ---------------------------------------------------------------------------------------------


def plural(noun: str) -> str:
    """'circle' → 'circles', 'cross' → 'crosses', 'letter A' → 'letter As'."""
    last = noun.rsplit(" ", 1)[-1]
    if len(last) > 1 and last.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    return noun + "s"


def _counted(words: Sequence[str], noun: str, count: int) -> str:
    if count == 1:
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words, noun])
    return " ".join([_NUMBER_WORDS[count], *words, plural(noun)])


def caption_simple(obj: ObjectSpec) -> str:
    """Mask-Simple: colour and object, e.g. 'a red circle', 'two blue letter As'."""
    return _counted([obj.colour], obj.noun, obj.count)


def caption_rich(obj: ObjectSpec) -> str:
    """Mask-Rich: size, colour, texture and object, e.g. 'a large red striped circle'."""
    return _counted([obj.size, obj.colour, obj.texture], obj.noun, obj.count)


def spatial_phrase(positions: Sequence[Tuple[float, float]]) -> str:
    """Where the instances' centroid lies on a 3×3 grid: 'on the left', 'at the top right', 'in the middle'."""
    x = sum(p[0] for p in positions) / len(positions)
    y = sum(p[1] for p in positions) / len(positions)
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else None
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else None
    if row and col:
        return f"at the {row} {col}"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the middle"


def background_phrase(bg: BackgroundSpec) -> str:
    c = bg.colours
    if bg.kind == "plain":
        return f"on a plain {c[0]} background"
    if bg.kind == "gradient":
        return f"on a {c[0]} gradient background"
    if bg.kind == "stripes":
        return f"on a background of {c[0]} and {c[1]} stripes"
    if bg.kind == "noise":
        return f"on a noisy {c[0]} background"
    return f"on a painting of {c[0]} and {c[1]} blotches"


def caption_full(scene: SceneSpec) -> str:
    """Full: every object (Mask-Rich wording; single instances with where they are) and the background."""
    parts = [caption_rich(o) + (" " + spatial_phrase(o.positions) if o.count == 1 else "") for o in scene.objects]
    if not parts:
        return "an empty scene " + background_phrase(scene.background)
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{listed} {background_phrase(scene.background)}"


# ---------------------------------------------------------------------------------------------
# Sampling a scene
# ---------------------------------------------------------------------------------------------


def check_int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi] (no upper bound when ``hi`` is None); TypeError for a non-int
    (bool included), ValueError out of range, each naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {'in ' if hi is not None else ''}{bound}, got {value}")
    return value


def check_resolution(resolution) -> int:
    return check_int("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)


# A disc an instance keeps clear: (x, y, BOUND·radius), normalised.
Disc = Tuple[float, float, float]


def occupied(obj: ObjectSpec) -> List[Disc]:
    """The discs the instances of ``obj`` keep clear of other instances."""
    return [(x, y, obj.radius * BOUND) for x, y in obj.positions]


def fits(x: float, y: float, radius: float, taken: Sequence[Disc]) -> bool:
    """The placement rule: an instance of ``radius`` centred at (x, y) lies inside the frame (its
    disc plus half the GAP) and its disc is at least GAP away from every disc in ``taken``."""
    lo, hi = radius * BOUND + GAP / 2, 1 - radius * BOUND - GAP / 2
    return (lo <= x <= hi and lo <= y <= hi and
            all(math.hypot(x - tx, y - ty) >= radius * BOUND + tb + GAP for tx, ty, tb in taken))


def place(rng: np.random.Generator, radius: float, count: int, taken: Sequence[Disc] = (),
          tries: int = 60) -> Optional[Tuple[Tuple[float, float], ...]]:
    """Centres for ``count`` instances of ``radius``, each drawn uniformly inside the frame until it
    `fits` (clear of ``taken`` and of the ones placed before it); None after ``tries`` misses."""
    lo, hi = radius * BOUND + GAP / 2, 1 - radius * BOUND - GAP / 2
    if lo > hi:
        return None
    placed: List[Disc] = []
    for _ in range(count):
        for _ in range(tries):
            x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
            if fits(x, y, radius, [*taken, *placed]):
                placed.append((x, y, radius * BOUND))
                break
        else:
            return None
    return tuple((x, y) for x, y, _ in placed)


def check_drawn(name: str, values: Sequence[str], allowed: Sequence[str]) -> Tuple[str, ...]:
    """``values`` as a tuple, if it is a non-empty list of ``allowed`` (repeats allowed: a value listed
    twice is drawn twice as often)."""
    values = tuple(values) if not isinstance(values, str) else (values,)
    if not values or not set(values) <= set(allowed):
        raise ValueError(f"{name} must name values of {tuple(allowed)} (repeats allowed), got {list(values)}")
    return values


def sample_scene(rng: np.random.Generator, *, max_objects: int = 2, p_glyph: float = 0.3,
                 shapes: Sequence[str] = SHAPES, sizes: Sequence[str] = SIZES) -> SceneSpec:
    """Draw a scene: a background and 1..max_objects objects, each with its own shape and colour
    (and colours unlike the background's), so that every Mask-Simple caption names one object.
    An object is a glyph with probability ``p_glyph``, else a shape drawn uniformly from ``shapes``;
    its size class is drawn uniformly from ``sizes``. Both are lists in which a value listed twice is
    drawn twice as often (a training mix that favours, say, stars and large objects); the defaults
    draw every shape and size equally often."""
    max_objects = check_int("max_objects", max_objects, 1, 4)
    if not 0.0 <= p_glyph <= 1.0:
        raise ValueError(f"p_glyph must be in [0, 1], got {p_glyph}")
    shapes, sizes = check_drawn("shapes", shapes, SHAPES), check_drawn("sizes", sizes, SIZES)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    n_bg = 2 if kind in ("stripes", "painting") else 1
    bg_colours = tuple(COLOURS[i] for i in rng.choice(len(COLOURS), size=n_bg, replace=False))
    background = BackgroundSpec(kind, bg_colours, angle=float(rng.uniform(0, math.pi)),
                                period=float(rng.uniform(0.08, 0.16)), seed=int(rng.integers(2**31)))

    free_colours = [c for c in COLOURS if c not in bg_colours]
    used_shapes: set = set()
    taken: List[Disc] = []
    objects: List[ObjectSpec] = []
    n_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(n_objects):
        for _attempt in range(8):  # a crowded draw (three large instances, say) is redrawn
            if rng.random() < p_glyph:
                shape = str(GLYPHS[rng.integers(len(GLYPHS))])
            else:
                shape = str(shapes[rng.integers(len(shapes))])
            colour = free_colours[rng.integers(len(free_colours))]
            texture = TEXTURES[rng.integers(len(TEXTURES))]
            size = sizes[rng.integers(len(sizes))]
            count = int(COUNTS[rng.integers(len(COUNTS))])
            radius = float(rng.uniform(*SIZE_RADIUS[size]))
            if shape in used_shapes:
                continue
            positions = place(rng, radius, count, taken)
            if positions is None:
                continue
            objects.append(ObjectSpec(shape, colour, COLOUR_RGB[colour], texture, size, radius, positions))
            used_shapes.add(shape)
            free_colours.remove(colour)
            taken.extend(occupied(objects[-1]))
            break
    if not objects:  # eight crowded draws (rare, likelier with only large sizes): one instance in the middle
        shape, size = (GLYPHS[0] if p_glyph == 1.0 else shapes[0]), sizes[0]
        objects.append(ObjectSpec(shape, free_colours[0], COLOUR_RGB[free_colours[0]], "solid", size,
                                  float(np.mean(SIZE_RADIUS[size])), ((0.5, 0.5),)))
    return SceneSpec(background, tuple(objects))


VARIED_ATTRIBUTES = ("colour", "shape", "size", "position")


def check_varied_attributes(name: str, attributes: Sequence[str]) -> Tuple[str, ...]:
    """``attributes`` as a tuple, if it is a non-empty list of :data:`VARIED_ATTRIBUTES` (repeats allowed)."""
    return check_drawn(name, attributes, VARIED_ATTRIBUTES)


def vary(scene: SceneSpec, rng: np.random.Generator, attributes: Sequence[str] = VARIED_ATTRIBUTES
         ) -> Tuple[SceneSpec, str]:
    """A minimal pair for ``scene``: the same scene with one attribute of one object changed, drawn
    from ``attributes`` — its colour (still unlike the background's and the other objects'), its
    shape (a glyph stays a glyph; still unlike the other objects'), its size class (redrawn radius,
    kept clear of the other objects) or, for a single instance, its 3×3 cell — so the two Full
    captions differ in that attribute's words alone. Returns the varied scene and the attribute;
    an attribute that cannot change here (no free place, say) gives way to the next one drawn. An
    attribute listed twice is drawn first twice as often."""
    attributes = check_varied_attributes("attributes", attributes)
    k = int(rng.integers(len(scene.objects)))
    obj, others = scene.objects[k], scene.objects[:k] + scene.objects[k + 1:]
    taken = [d for o in others for d in occupied(o)]
    for attribute in [attributes[i] for i in rng.permutation(len(attributes))]:
        changed = None
        if attribute == "colour":
            free = [c for c in COLOURS if c not in scene.background.colours and c != obj.colour
                    and all(c != o.colour for o in others)]
            if free:
                colour = free[int(rng.integers(len(free)))]
                changed = dataclasses.replace(obj, colour=colour, rgb=COLOUR_RGB[colour])
        elif attribute == "shape":
            pool = GLYPHS if obj.is_glyph else SHAPES
            free = [str(s) for s in pool if s != obj.shape and all(s != o.shape for o in others)]
            if free:
                changed = dataclasses.replace(obj, shape=free[int(rng.integers(len(free)))])
        elif attribute == "size":
            for size in [s for s in SIZES if s != obj.size]:
                radius = float(rng.uniform(*SIZE_RADIUS[size]))
                # a single instance keeps its centre where the new size fits there
                stays = obj.count == 1 and fits(*obj.positions[0], radius, taken)
                positions = obj.positions if stays else place(rng, radius, obj.count, taken)
                if positions is not None and (obj.count > 1 or spatial_phrase(positions) == spatial_phrase(obj.positions)):
                    changed = dataclasses.replace(obj, size=size, radius=radius, positions=positions)
                    break
        elif obj.count == 1:  # position: a single instance's cell is in the caption
            for _ in range(8):
                positions = place(rng, obj.radius, 1, taken)
                if positions is not None and spatial_phrase(positions) != spatial_phrase(obj.positions):
                    changed = dataclasses.replace(obj, positions=positions)
                    break
        if changed is not None:
            objects = scene.objects[:k] + (changed,) + scene.objects[k + 1:]
            return dataclasses.replace(scene, objects=objects), attribute
    raise ValueError("no attribute of the drawn object can change in this scene")


def scene_at(seed: int, index: int, **kwargs) -> SceneSpec:
    """Sample `index` of the world `seed`: its own generator, so any sample is drawn independently."""
    seed = check_int("seed", seed, 0)
    index = check_int("index", index, 0)
    return sample_scene(np.random.default_rng([seed, index, 0]), **kwargs)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class RenderedObject:
    spec: ObjectSpec
    mask: np.ndarray  # (H, W) bool: union of the instances' exact masks
    instance_masks: np.ndarray  # (count, H, W) bool
    instance_boxes: np.ndarray  # (count, 4) int64, (x0, y0, x1, y1), x1/y1 exclusive
    box: Tuple[int, int, int, int]  # tight box of `mask`, x1/y1 exclusive: mask[y0:y1, x0:x1]
    caption_simple: str
    caption_rich: str


@dataclass
class RenderedScene:
    spec: SceneSpec
    image: np.ndarray  # (3, H, W) float32 in [-1, 1]
    objects: List[RenderedObject]
    caption_full: str

    @property
    def resolution(self) -> int:
        return self.image.shape[-1]


def _rgb01(name: str) -> np.ndarray:
    return np.asarray(COLOUR_RGB[name], dtype=np.float32) / 255.0


def _mix(a: np.ndarray, b, t) -> np.ndarray:
    return a + (np.asarray(b, dtype=np.float32) - a) * t


def _smooth_noise(rng: np.random.Generator, grid: int, size: int) -> np.ndarray:
    """Value noise: a grid×grid random field bilinearly upsampled to size×size, in about [-1, 1]."""
    field = Image.fromarray(rng.standard_normal((grid, grid)).astype(np.float32), mode="F")
    return np.asarray(field.resize((size, size), Image.BILINEAR), dtype=np.float32)


def _render_background(bg: BackgroundSpec, n: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = coords[None, :], coords[:, None]
    c0 = _rgb01(bg.colours[0])
    if bg.kind == "plain":
        return np.broadcast_to(c0, (n, n, 3)).copy()
    if bg.kind == "gradient":
        t = ((x - 0.5) * math.cos(bg.angle) + (y - 0.5) * math.sin(bg.angle)) / math.sqrt(2) + 0.5
        return _mix(_mix(c0, 1.0, 0.35), c0 * 0.6, t[..., None])
    if bg.kind == "stripes":
        phase = (x * math.cos(bg.angle) + y * math.sin(bg.angle)) / bg.period
        return np.where((np.floor(phase) % 2 == 0)[..., None], c0, _rgb01(bg.colours[1])).astype(np.float32)
    rng = np.random.default_rng(bg.seed)
    if bg.kind == "noise":
        noise = 0.6 * _smooth_noise(rng, 6, n) + 0.4 * _smooth_noise(rng, 24, n)
        return np.clip(c0 + 0.12 * noise[..., None], 0.0, 1.0)
    # painting: soft elliptical blotches of the two colours (and lighter/darker tints) laid over each other
    c1 = _rgb01(bg.colours[1])
    out = np.broadcast_to(_mix(c0, c1, 0.5), (n, n, 3)).copy()
    for _ in range(14):
        colour = (c0, c1)[rng.integers(2)] * rng.uniform(0.8, 1.0) + rng.uniform(0.0, 0.15)
        cx, cy = rng.uniform(0, 1, size=2)
        a, b = rng.uniform(0.08, 0.3, size=2)
        th = rng.uniform(0, math.pi)
        dx, dy = x - cx, y - cy
        u = (dx * math.cos(th) + dy * math.sin(th)) / a
        v = (-dx * math.sin(th) + dy * math.cos(th)) / b
        alpha = np.clip(1.6 * np.exp(-(u * u + v * v)) - 0.3, 0.0, 1.0)[..., None]
        out = _mix(out, np.clip(colour, 0, 1), alpha)
    return out.astype(np.float32)


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a closed polygon (negative inside, even-odd rule), in the units of px/py."""
    d2 = np.full(np.broadcast(px, py).shape, np.inf)
    inside = np.zeros(d2.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(verts, np.roll(verts, 1, axis=0)):
        ex, ey = bx - ax, by - ay
        wx, wy = px - ax, py - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ey != 0:
            crosses = (py >= ay) != (py >= by)
            inside ^= crosses & (px < ax + (py - ay) * ex / ey)
    return np.where(inside, -np.sqrt(d2), np.sqrt(d2))


def _axis_overlap(pixels: np.ndarray, edges: np.ndarray, antialias: bool) -> np.ndarray:
    """(pixels, cells): how much of each pixel [p, p+1) each cell [e_j, e_j+1) covers (area or centre test)."""
    lo, hi = edges[None, :-1], edges[None, 1:]
    p = pixels[:, None].astype(np.float64)
    if antialias:
        return np.clip(np.minimum(p + 1, hi) - np.maximum(p, lo), 0.0, None)
    return ((p + 0.5 >= lo) & (p + 0.5 < hi)).astype(np.float64)


def _glyph_coverage(ch: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray,
                    antialias: bool) -> np.ndarray:
    """Exact area coverage of a 5×7 glyph of half-height r: the bitmap is a union of cells, so the
    coverage separates into row-overlap @ bits @ column-overlapᵀ."""
    bits = _FONT_BITS[ch]
    cell = 2 * r / 7
    col_edges = cx - 2.5 * cell + cell * np.arange(6)
    row_edges = cy - 3.5 * cell + cell * np.arange(8)
    return _axis_overlap(ys, row_edges, antialias) @ bits @ _axis_overlap(xs, col_edges, antialias).T


def _texture(obj: ObjectSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(h, w, 3) colour of the object's material at local coordinates (u, v) in units of its radius."""
    base = np.asarray(obj.rgb, dtype=np.float32) / 255.0
    luminance = float(base @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    accent = _mix(base, 1.0, 0.55) if luminance < 0.45 else _mix(base, 0.0, 0.5)  # visible on black and white
    shape = np.broadcast(u, v).shape + (3,)
    if obj.texture == "solid":
        return np.broadcast_to(base, shape)
    if obj.texture == "striped":
        pattern = np.floor((u + v) / 0.45) % 2 == 1
    elif obj.texture == "dotted":
        du, dv = (u % 0.55) - 0.275, (v % 0.55) - 0.275
        pattern = du * du + dv * dv < 0.14**2
    elif obj.texture == "checkered":
        pattern = (np.floor(u / 0.45) + np.floor(v / 0.45)) % 2 == 1
    else:  # metallic: light at the top, dark at the bottom, with a diagonal specular band
        shade = (1.2 - 0.35 * (v + 1)).astype(np.float32)[..., None]
        highlight = np.exp(-(((u + v) * 0.7 + 0.35) / 0.2) ** 2).astype(np.float32)[..., None]
        return np.clip(_mix(base * shade, 1.0, 0.7 * highlight), 0.0, 1.0)
    return np.where(pattern[..., None], accent, base).astype(np.float32)


def render(scene: SceneSpec, resolution: int, *, antialias: bool = True) -> RenderedScene:
    """Draw `scene` at resolution×resolution: image (3, H, W) in [-1, 1], exact masks and tight boxes.

    An instance's mask is the set of pixels its shape covers by at least half (signed distance ≤ 0
    at the pixel centre for shapes, area coverage ≥ ½ for glyphs); with antialias=False the image
    shows exactly those pixels in the object's material. Instances never overlap, so every mask is
    exactly what is visible of its object.
    """
    n = check_resolution(resolution)
    canvas = _render_background(scene.background, n)
    objects: List[RenderedObject] = []
    for obj in scene.objects:
        r = obj.radius * n
        masks = np.zeros((obj.count, n, n), dtype=bool)
        boxes = np.zeros((obj.count, 4), dtype=np.int64)
        for k, (px, py) in enumerate(obj.positions):
            cx, cy = px * n, py * n
            reach = r * BOUND + 1.5  # every pixel the instance can touch, anti-aliased edge included
            x0, x1 = max(0, int(cx - reach)), min(n, int(math.ceil(cx + reach)))
            y0, y1 = max(0, int(cy - reach)), min(n, int(math.ceil(cy + reach)))
            xs, ys = np.arange(x0, x1), np.arange(y0, y1)
            u = ((xs + 0.5 - cx) / r)[None, :]
            v = ((ys + 0.5 - cy) / r)[:, None]
            if obj.is_glyph:
                alpha = _glyph_coverage(obj.shape, cx, cy, r, xs, ys, antialias)
                inside = alpha >= 0.5
            else:
                if obj.shape == "circle":
                    sdf = (np.sqrt(u * u + v * v) - _CIRCLE_RADIUS) * r
                else:
                    sdf = _polygon_sdf(u, v, _POLYGONS[obj.shape]) * r
                inside = sdf <= 0
                alpha = np.clip(0.5 - sdf, 0.0, 1.0) if antialias else inside.astype(np.float64)
            alpha = alpha.astype(np.float32)[..., None]
            window = canvas[y0:y1, x0:x1]
            canvas[y0:y1, x0:x1] = window + (_texture(obj, u, v) - window) * alpha
            masks[k, y0:y1, x0:x1] = inside
            boxes[k] = _tight_box(masks[k])
        union = masks.any(axis=0)
        objects.append(RenderedObject(obj, union, masks, boxes, _tight_box(union), caption_simple(obj),
                                      caption_rich(obj)))
    image = np.ascontiguousarray((canvas * 2.0 - 1.0).transpose(2, 0, 1), dtype=np.float32)
    return RenderedScene(scene, image, objects, caption_full(scene))


def _tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) with x1/y1 exclusive; (0, 0, 0, 0) for an empty mask."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def without_objects(scene: SceneSpec) -> SceneSpec:
    """The same scene with its background only (for checking masks and background preservation)."""
    return dataclasses.replace(scene, objects=())
