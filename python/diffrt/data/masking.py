"""Masks for inpainting training, each with the prompt to train it with.

Imagen Editor (§3.1) trains on *object masking*: the box of an object an off-the-shelf detector
found, so that the masked region is what the prompt talks about and the model learns to follow
the text; *random masking* (random boxes and brush strokes) covers regions the prompt need not
mention. A mixture of the two, plus "everything masked" with some probability, lets one model do
inpainting and plain text-to-image.

A strategy is called as `strategy(scene, rng)` with a `RenderedScene` (or anything with `image`,
`objects` and `caption_full`) and a `numpy.random.Generator`, and returns a `MaskedPrompt`.
Real data sets plug in through `Detector`: `objects_from_detections` turns a detector's
(box, label) pairs into objects that `ObjectMasking(use_box=True)` masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw

from .world import RenderedScene, plural

Box = Tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive


@dataclass
class MaskedPrompt:
    mask: np.ndarray  # (1, H, W) float32, 1 = repaint
    prompt: str
    kind: str  # "object", "random" or "full"
    target: Optional[int] = None  # index of the masked object in scene.objects (object masking)


class MaskingStrategy(Protocol):
    def __call__(self, scene: RenderedScene, rng: np.random.Generator) -> MaskedPrompt: ...


def _check_probability(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _size(scene) -> Tuple[int, int]:
    return scene.image.shape[-2], scene.image.shape[-1]


class FullMasking:
    """Everything masked, prompt = the Full caption: the text-to-image case."""

    def __call__(self, scene, rng: np.random.Generator) -> MaskedPrompt:
        h, w = _size(scene)
        return MaskedPrompt(np.ones((1, h, w), dtype=np.float32), scene.caption_full, "full")

    def __repr__(self) -> str:
        return "FullMasking()"


class ObjectMasking:
    """Mask one object named by the prompt: its instances' boxes (use_box=True, what a detector gives)
    or its exact mask; prompt = that object's Mask-Rich caption with probability p_rich, else Mask-Simple.

    With probability ``p_full_caption`` the prompt is the scene's Full caption instead, as in Imagen
    Editor's training, where detector boxes are masked under the image's own caption: a model then
    also learns to inpaint a region from a caption of the whole image (EditBench's Full prompts) and
    a masking ablation against random masking (Full captions) compares masks, not caption styles."""

    def __init__(self, use_box: bool = True, p_rich: float = 0.5, p_full_caption: float = 0.0):
        if not isinstance(use_box, bool):
            raise TypeError(f"use_box must be a bool, got {type(use_box).__name__}")
        self.use_box = use_box
        self.p_rich = _check_probability("p_rich", p_rich)
        self.p_full_caption = _check_probability("p_full_caption", p_full_caption)

    def __call__(self, scene, rng: np.random.Generator) -> MaskedPrompt:
        if not scene.objects:
            raise ValueError("scene has no objects to mask; use RandomMasking or FullMasking for it")
        target = int(rng.integers(len(scene.objects)))
        obj = scene.objects[target]
        rich = rng.random() < self.p_rich
        h, w = _size(scene)
        mask = np.zeros((1, h, w), dtype=np.float32)
        if self.use_box:
            for x0, y0, x1, y1 in obj.instance_boxes:
                mask[0, y0:y1, x0:x1] = 1.0
        else:
            if obj.mask is None:
                raise ValueError("use_box=False needs exact object masks; a detector's objects only have boxes")
            mask[0] = obj.mask
        prompt = obj.caption_rich if rich else obj.caption_simple
        if self.p_full_caption > 0 and rng.random() < self.p_full_caption:  # no draw at 0: streams stay as before
            prompt = scene.caption_full
        return MaskedPrompt(mask, prompt, "object", target)

    def __repr__(self) -> str:
        return f"ObjectMasking(use_box={self.use_box}, p_rich={self.p_rich}, p_full_caption={self.p_full_caption})"


class RandomMasking:
    """Random boxes and/or brush strokes (resolution-free: sizes are fractions of the side); prompt = Full
    caption. Each mask has 1..max_boxes boxes, or 1..max_strokes strokes, or both (p_strokes, p_both)."""

    def __init__(self, max_boxes: int = 2, max_strokes: int = 3, p_strokes: float = 0.5, p_both: float = 0.2,
                 box_side: Tuple[float, float] = (0.15, 0.6), stroke_width: Tuple[float, float] = (0.04, 0.12)):
        for name, v in (("max_boxes", max_boxes), ("max_strokes", max_strokes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name, (lo, hi) in (("box_side", box_side), ("stroke_width", stroke_width)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= 1, got {(lo, hi)}")
        self.max_boxes, self.max_strokes = max_boxes, max_strokes
        self.p_strokes = _check_probability("p_strokes", p_strokes)
        self.p_both = _check_probability("p_both", p_both)
        self.box_side, self.stroke_width = box_side, stroke_width

    def __call__(self, scene, rng: np.random.Generator) -> MaskedPrompt:
        h, w = _size(scene)
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        both = rng.random() < self.p_both
        strokes = both or rng.random() < self.p_strokes
        if both or not strokes:
            for _ in range(int(rng.integers(1, self.max_boxes + 1))):
                bw, bh = rng.uniform(*self.box_side, size=2)
                x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
                # at least one pixel whatever the resolution
                draw.rectangle([int(x0 * w), int(y0 * h), max(int(x0 * w), int((x0 + bw) * w) - 1),
                                max(int(y0 * h), int((y0 + bh) * h) - 1)], fill=1)
        if strokes:
            for _ in range(int(rng.integers(1, self.max_strokes + 1))):
                width = max(1, round(rng.uniform(*self.stroke_width) * w))
                points = self._brush_path(rng)
                draw.line([(x * w, y * h) for x, y in points], fill=1, width=width, joint="curve")
                for x, y in (points[0], points[-1]):  # round caps
                    draw.ellipse([x * w - width / 2, y * h - width / 2, x * w + width / 2, y * h + width / 2], fill=1)
        mask = np.asarray(canvas, dtype=np.float32)[None]
        return MaskedPrompt(np.ascontiguousarray(mask), scene.caption_full, "random")

    @staticmethod
    def _brush_path(rng: np.random.Generator) -> List[Tuple[float, float]]:
        """A wandering polyline: 3–8 segments, each turning a little from the last."""
        x, y = rng.uniform(0.1, 0.9, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        points = [(float(x), float(y))]
        for _ in range(int(rng.integers(3, 9))):
            angle += rng.uniform(-1.0, 1.0)
            step = rng.uniform(0.05, 0.15)
            x = float(np.clip(x + step * math.cos(angle), 0.0, 1.0))
            y = float(np.clip(y + step * math.sin(angle), 0.0, 1.0))
            points.append((x, y))
        return points

    def __repr__(self) -> str:
        return f"RandomMasking(max_boxes={self.max_boxes}, max_strokes={self.max_strokes}, p_strokes={self.p_strokes})"


class MixedMasking:
    """Pick one strategy per sample by weight; with probability p_full mask everything instead."""

    def __init__(self, choices: Sequence[Tuple[MaskingStrategy, float]], p_full: float = 0.0):
        choices = list(choices)
        if not choices:
            raise ValueError("choices must hold at least one (strategy, weight) pair")
        weights = []
        for i, item in enumerate(choices):
            if not (isinstance(item, tuple) and len(item) == 2 and callable(item[0])):
                raise TypeError(f"choices[{i}] must be a (strategy, weight) pair, got {item!r}")
            weight = item[1]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 <= weight < math.inf):
                raise ValueError(f"choices[{i}] weight must be a finite number >= 0, got {weight!r}")
            weights.append(float(weight))
        if sum(weights) <= 0:
            raise ValueError("choices must have a positive total weight")
        self.strategies = [s for s, _ in choices]
        self.probabilities = np.asarray(weights) / sum(weights)
        self.p_full = _check_probability("p_full", p_full)
        self._full = FullMasking()

    def __call__(self, scene, rng: np.random.Generator) -> MaskedPrompt:
        if rng.random() < self.p_full:
            return self._full(scene, rng)
        return self.strategies[int(rng.choice(len(self.strategies), p=self.probabilities))](scene, rng)

    def __repr__(self) -> str:
        pairs = ", ".join(f"({s!r}, {p:.3g})" for s, p in zip(self.strategies, self.probabilities))
        return f"MixedMasking([{pairs}], p_full={self.p_full})"


def default_masking() -> MixedMasking:
    """Half object masking (boxes), half random masking, and 10 % everything masked."""
    return MixedMasking([(ObjectMasking(use_box=True), 0.5), (RandomMasking(), 0.5)], p_full=0.1)


# ---------------------------------------------------------------------------------------------
# Detectors: where object masking gets its boxes on real data
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Detector(Protocol):
    """Finds objects in an image (3, H, W): a list of (box (x0, y0, x1, y1) in pixels, x1/y1 exclusive, label)."""

    def detect(self, image: np.ndarray) -> List[Tuple[Box, str]]: ...


class GroundTruthDetector:
    """The world's exact boxes of one rendered scene, labelled with the Mask-Simple noun phrase
    ('red circle'), or the Mask-Rich one ('large red striped circle') with rich=True; one detection
    per instance, as a real detector reports them."""

    def __init__(self, scene: RenderedScene, *, rich: bool = False):
        self.scene, self.rich = scene, rich

    def detect(self, image: np.ndarray) -> List[Tuple[Box, str]]:
        if tuple(np.shape(image)) != self.scene.image.shape:
            raise ValueError(f"image must be the scene this detector was built for, shape {self.scene.image.shape}, "
                             f"got {tuple(np.shape(image))}")
        detections = []
        for obj in self.scene.objects:
            s = obj.spec
            label = " ".join(([s.size] if self.rich else []) + [s.colour] + ([s.texture] if self.rich else []) + [s.noun])
            detections.extend((tuple(int(v) for v in box), label) for box in obj.instance_boxes)
        return detections


@dataclass
class DetectedObject:
    """An object as a detector sees it: boxes only (no exact mask), captions from its label."""

    instance_boxes: np.ndarray  # (count, 4) int64
    caption_simple: str
    caption_rich: str
    mask: Optional[np.ndarray] = None


@dataclass
class AnnotatedImage:
    """Any image with a caption and detected objects, accepted by every masking strategy."""

    image: np.ndarray  # (3, H, W)
    caption_full: str
    objects: List[DetectedObject]


_NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}


def objects_from_detections(detections: Sequence[Tuple[Box, str]]) -> List[DetectedObject]:
    """Group detections by label: two 'red circle' boxes become one object captioned 'two red circles'."""
    grouped: dict = {}
    for box, label in detections:
        if len(box) != 4:
            raise ValueError(f"each detection box must be (x0, y0, x1, y1), got {box!r}")
        grouped.setdefault(label, []).append([int(v) for v in box])
    objects = []
    for label, boxes in grouped.items():
        n = len(boxes)
        if n == 1:
            caption = ("an " if label[:1] in "aeiou" else "a ") + label
        else:
            caption = f"{_NUMBER_WORDS.get(n, str(n))} {plural(label)}"
        objects.append(DetectedObject(np.asarray(boxes, dtype=np.int64), caption, caption))
    return objects


def annotate(image: np.ndarray, caption: str, detector: Detector) -> AnnotatedImage:
    """Run a detector on a (real) image so that ObjectMasking(use_box=True) can mask what it found."""
    return AnnotatedImage(image, caption, objects_from_detections(detector.detect(image)))
