"""Pipelines, one file per paper: DiffEdit (more follow: Imagen Editor cascade, Imagic, unCLIP)."""

from .diffedit import DiffEditOutput, DiffEditPipeline

__all__ = ["DiffEditOutput", "DiffEditPipeline"]
