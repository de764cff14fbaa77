"""EditBench's design on the procedural world: the prompt types, the factors an item varies (mask
size, attribute, object category, scene), the design cell of item i, and the item itself.

EditBench (Imagen Editor, Wang et al. 2023, §4) pairs each image with a mask and three prompts —
Mask-Simple ("a metal cat"), Mask-Rich (the masked object with all its attributes) and Full (the
whole edited image) — and breaks results down by mask size (small / medium / large), by the
attribute an edit tests (colour, material, shape, size, count), by object (common, rare, text
rendering) and by scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data.world import BACKGROUNDS, COLOURS, COUNTS, GLYPHS, SIZE_RADIUS, SIZES, TEXTURES, ObjectSpec, SceneSpec

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
BREAKDOWNS = {"mask_size": MASK_SIZES, "attribute": ATTRIBUTES, "object_category": tuple(OBJECT_CATEGORIES),
              "scene": SCENES}
# The radius a caption or a size hypothesis uses for each size class: the middle of its range.
MIDDLE_RADIUS = {s: (lo + hi) / 2 for s, (lo, hi) in SIZE_RADIUS.items()}


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
    # renderings of every answer the attribute checks compare with, made on first use
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


def attribute_value(obj: ObjectSpec, attribute: str):
    """The object's value of one of ATTRIBUTES (material: its texture)."""
    return {"colour": obj.colour, "material": obj.texture, "shape": obj.shape, "size": obj.size,
            "count": obj.count}[attribute]


def attribute_values(attribute: str, category: str) -> Sequence:
    """Every value ``attribute`` can take for an object of ``category`` (shapes stay in their category)."""
    return {"colour": COLOURS, "material": TEXTURES, "shape": OBJECT_CATEGORIES[category], "size": SIZES,
            "count": COUNTS}[attribute]
