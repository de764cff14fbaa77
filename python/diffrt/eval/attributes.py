"""Checking an edit's attributes on the image itself: analysis by synthesis on the known background.

The world supplies each EditBench item's ground truth — the scene without the edited object, exact
masks, the edited object's description — so the painted silhouette is compared with re-renderings
of every possible answer (`predict_attributes`), and the painted colour with every colour the world
paints an object with (`dominant_colour`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.world import COLOURS, GLYPHS, SHAPES, SIZES, TEXTURES, ObjectSpec, SceneSpec, render
from ._shared import OBJECT_PALETTES, closing, component_labels
from .design import ATTRIBUTES, MIDDLE_RADIUS, EditBenchItem, attribute_value

# A pixel belongs to the painted object when some channel differs from the known background by
# more than this ([−1, 1] units: 0.4 = 20 % of the range). Object colours are drawn unlike the
# background's, so a rendered object clears it everywhere but at its anti-aliased fringe.
SILHOUETTE_THRESHOLD = 0.4


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
        middle = dataclasses.replace(target, size=size, radius=MIDDLE_RADIUS[size])
        hyp["size_areas"][size] = int(closing(_object_alone(item, middle, in_mask=False)[1]).sum())
    hyp["instance_area"] = closing(hyp["truth_silhouette"]).sum() / target.count
    radius_px = target.radius * n
    hyp["textures"] = {}
    for t in TEXTURES:
        image, inside = _object_alone(item, dataclasses.replace(target, texture=t))
        hyp["textures"][t] = texture_features(torch.from_numpy(image), inside, radius_px)
    hyp["radius_px"] = radius_px
    return hyp


def _unpack(hyp: dict, n: int) -> np.ndarray:
    return np.unpackbits(hyp["shape_silhouettes"], axis=1, count=n * n).reshape(-1, n, n).astype(bool)


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
        scores = {c: float(torch.cdist(pixels, p).amin(dim=1).median()) for c, p in OBJECT_PALETTES.items()}
    else:
        under = background.float()[:, region].T
        scores = {c: float(_segment_distance(pixels, under, p).median()) for c, p in OBJECT_PALETTES.items()}
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


def _components(region: np.ndarray) -> np.ndarray:
    """Sizes of the 8-connected components of ``region``."""
    labels = component_labels(region)
    return np.unique(labels[region], return_counts=True)[1]


def expected_attributes(item: EditBenchItem) -> Dict[str, object]:
    """The edited object's colour, material, shape, size and count (what a perfect edit shows)."""
    obj = item.target_scene.objects[0]
    return {a: attribute_value(obj, a) for a in ATTRIBUTES}


def predict_attributes(item: EditBenchItem, image: torch.Tensor) -> Dict[str, object]:
    """Each attribute of what ``image`` (3, H, W) painted inside the item's mask (None: nothing painted).

    On the silhouette S (`silhouette`): colour = the palette that best explains S over the known
    background (`dominant_colour`);
    shape = the shape or glyph whose silhouette, rendered at the edit's place and size, has the
    highest IoU with S (renderings identical at this resolution count as the same answer); material
    = the texture whose rendering's `texture_features` are nearest. On S closed (3×3, `closing`):
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
    closed = closing(s) & (item.mask[0].numpy() > 0.5)
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
