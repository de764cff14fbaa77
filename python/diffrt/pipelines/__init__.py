"""Pipelines, one file per paper: Imagen Editor (cascade inpainting), DiffEdit, Imagic, unCLIP.

They share one vocabulary: ``guidance`` (``<stage>_guidance`` for another stage) is a number, a
1-D tensor of per-output weights or a schedule (step, num_steps) -> w; ``num_steps`` (and
``<stage>_steps``) count sampler steps; each returns a ``…Output``."""

from .diffedit import DiffEditOutput, DiffEditPipeline
from .imagen_editor import ImagenEditorOutput, ImagenEditorPipeline
from .imagic import ImagicOutput, ImagicPipeline, interpolate_condition
from .unclip import UnCLIPOutput, UnCLIPPipeline, slerp

__all__ = [
    "DiffEditOutput",
    "DiffEditPipeline",
    "ImagenEditorOutput",
    "ImagenEditorPipeline",
    "ImagicOutput",
    "ImagicPipeline",
    "UnCLIPOutput",
    "UnCLIPPipeline",
    "interpolate_condition",
    "slerp",
]
