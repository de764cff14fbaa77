"""Training: the shared loop (AdamW, warmup + cosine, EMA, clipping, accumulation, autocast,
checkpoints with exact resume, DDP) and the model kinds built on it."""

from .checkpoint import CheckpointError, Checkpointer
from .loop import EMA, TrainConfig, Trainer, warmup_cosine

__all__ = ["CheckpointError", "Checkpointer", "EMA", "TrainConfig", "Trainer", "warmup_cosine"]
