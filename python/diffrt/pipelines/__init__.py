"""Pipelines, one file per paper: Imagen Editor (cascade inpainting), DiffEdit, Imagic, unCLIP."""

from .diffedit import DiffEditOutput, DiffEditPipeline
from .imagen_editor import CascadeOutput, ImagenEditorPipeline
from .imagic import ImagicPipeline, ImagicResult, interpolate_condition
from .unclip import UnCLIPOutput, UnCLIPPipeline, slerp

__all__ = [
    "CascadeOutput",
    "DiffEditOutput",
    "DiffEditPipeline",
    "ImagenEditorPipeline",
    "ImagicPipeline",
    "ImagicResult",
    "UnCLIPOutput",
    "UnCLIPPipeline",
    "interpolate_condition",
    "slerp",
]
