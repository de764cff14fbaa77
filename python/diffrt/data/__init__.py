"""The procedural world the project trains and evaluates on (no data set can be downloaded):
scenes in EditBench's attribute–object–scene categories, exact masks and boxes, captions at the
Mask-Simple / Mask-Rich / Full levels, masking strategies for inpainting training, torch data sets."""

from .dataset import ProceduralDataset, ProceduralStream, collate, steps_per_epoch
from .masking import (
    AnnotatedImage,
    DetectedObject,
    Detector,
    FullMasking,
    GroundTruthDetector,
    MaskedPrompt,
    MaskingStrategy,
    MixedMasking,
    ObjectMasking,
    RandomMasking,
    annotate,
    default_masking,
    objects_from_detections,
)
from .world import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    COUNTS,
    DIGITS,
    GLYPHS,
    LETTERS,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    SHAPES,
    SIZES,
    TEXTURES,
    BackgroundSpec,
    ObjectSpec,
    RenderedObject,
    RenderedScene,
    SceneSpec,
    caption_full,
    caption_rich,
    caption_simple,
    render,
    sample_scene,
    scene_at,
    without_objects,
)

__all__ = [
    "AnnotatedImage", "BACKGROUNDS", "BackgroundSpec", "COLOURS", "COLOUR_RGB", "COUNTS", "DIGITS", "DetectedObject",
    "Detector", "FullMasking", "GLYPHS", "GroundTruthDetector", "LETTERS", "MAX_RESOLUTION", "MIN_RESOLUTION",
    "MaskedPrompt", "MaskingStrategy", "MixedMasking", "ObjectMasking", "ObjectSpec", "ProceduralDataset",
    "ProceduralStream", "RandomMasking", "RenderedObject", "RenderedScene", "SHAPES", "SIZES", "SceneSpec",
    "TEXTURES", "annotate", "caption_full", "caption_rich", "caption_simple", "collate", "default_masking",
    "objects_from_detections", "render", "sample_scene", "scene_at", "steps_per_epoch", "without_objects",
]
