"""What both benchmarks share: argument checks, per-item noise, the colours the world paints an
object with, and binary morphology on (H, W) bool masks."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..data.world import COLOUR_RGB, check_resolution


def check_positive(name: str, value, allow_zero: bool = False) -> int:
    """``value`` as an int >= 1 (>= 0 with ``allow_zero``); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")
    return int(value)


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for one batch or item, from (seed, keys): the same item gets the same noise in
    any model and at any batch size."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


def draw_item(draw: Callable[[np.random.Generator, int, int, str], Optional[Any]], seed: int, index: int,
              resolution: int, *, stream: int, attributes: Sequence[str], name: str, attempts: int = 200) -> Any:
    """Item ``index`` of benchmark ``seed``: ``draw(rng, index, resolution, attribute)`` (None: redraw) with
    rng = default_rng([seed, index, attempt, stream]) and the attribute ``attributes[index % len]``."""
    seed, index = check_positive("seed", seed, allow_zero=True), check_positive("index", index, allow_zero=True)
    resolution = check_resolution(resolution)
    attribute = attributes[index % len(attributes)]
    for attempt in range(attempts):
        item = draw(np.random.default_rng([seed, index, attempt, stream]), index, resolution, attribute)
        if item is not None:
            return item
    raise RuntimeError(f"{name} item {index} ({attribute}) found no valid draw in {attempts} attempts at "
                       f"{resolution} px")


def threshold_label(config: Dict[str, Any]) -> str:
    """A report config's dynamic-thresholding percentile, or 'off' (also for reports that predate the key)."""
    return str(config.get("dynamic_threshold") or "off")


# Every colour the world paints an object of a named colour with: its base, the accent of its
# striped / dotted / checkered textures, the shades of its metallic finish (0.5× to 1.2×) and some
# of those shades under the metallic highlight (mixed towards white).
def _object_palettes() -> Dict[str, torch.Tensor]:
    out = {}
    for name, rgb in COLOUR_RGB.items():
        base = np.asarray(rgb, dtype=np.float64) / 255
        luminance = float(base @ np.array([0.299, 0.587, 0.114]))
        accent = base + (1.0 - base) * 0.55 if luminance < 0.45 else base * 0.5
        shades = [np.clip(base * s, 0, 1) for s in np.linspace(0.5, 1.2, 15)]
        highlights = [shade + (1 - shade) * h for shade in shades[::3] for h in (0.25, 0.5)]
        out[name] = torch.from_numpy(np.stack([base, accent, *shades, *highlights]) * 2 - 1).float()
    return out


OBJECT_PALETTES: Dict[str, torch.Tensor] = _object_palettes()  # per colour name, (E, 3) in [−1, 1]


def closing(region: np.ndarray) -> np.ndarray:
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
