"""Pipelines, one file per paper: DiffEdit, Imagic (more follow: Imagen Editor cascade, unCLIP)."""

from .diffedit import DiffEditOutput, DiffEditPipeline
from .imagic import ImagicPipeline, ImagicResult, interpolate_condition

__all__ = ["DiffEditOutput", "DiffEditPipeline", "ImagicPipeline", "ImagicResult", "interpolate_condition"]
