"""The Denoiser protocol: what a sampler or pipeline needs from a diffusion model.

Any object with these attributes works — diffrt's own models, a diffusers UNet through
:mod:`diffrt.integrations.diffusers`, or a hand-written function wrapped in :class:`FunctionDenoiser`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from .ops import PREDICTION_TYPES


@runtime_checkable
class Denoiser(Protocol):
    """``model(x_t, t, cond) -> prediction`` with x_t (B, C_in, H, W), t a (B,) integer tensor of
    training timesteps, cond whatever the model conditions on (a tensor, a dict of tensors, or
    None); the prediction is ε, v or x0 (``prediction_type``), shaped (B, C_out, H, W)."""

    prediction_type: str
    in_channels: int
    out_channels: int

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...


@dataclass
class FunctionDenoiser:
    """A plain function ``fn(x_t, t, cond)`` as a :class:`Denoiser`."""

    fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    prediction_type: str = "epsilon"
    in_channels: int = 4
    out_channels: int = 4

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    def __call__(self, x_t, t, cond):
        return self.fn(x_t, t, cond)


def check_denoiser(model: Any) -> None:
    """Raise a clear error when ``model`` does not follow the Denoiser protocol."""
    missing = [a for a in ("prediction_type", "in_channels", "out_channels") if not hasattr(model, a)]
    if missing or not callable(model):
        what = f"is missing {', '.join(missing)}" if missing else "is not callable"
        raise TypeError(f"model must follow diffrt.Denoiser (callable (x_t, t, cond) with prediction_type, "
                        f"in_channels, out_channels); {type(model).__name__} {what}")
    if model.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"model.prediction_type must be one of {PREDICTION_TYPES}, got {model.prediction_type!r}")
