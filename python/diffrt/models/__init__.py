"""diffrt.models: the trainable modules of diffrt's pipelines — small, real and trainable on a CPU —
and :mod:`diffrt.models.bundle`, the folder of trained models they load from."""

from .clip import CLIP, CLIPConfig
from .downsample_cond import DownsampleCond
from .prior import DiffusionPrior, PriorConfig
from .text_encoder import TextEncoder
from .tokenizer import Tokenizer, TruncationWarning
from .unet import UNet, UNetConfig

__all__ = [
    "CLIP",
    "CLIPConfig",
    "DiffusionPrior",
    "DownsampleCond",
    "PriorConfig",
    "TextEncoder",
    "Tokenizer",
    "TruncationWarning",
    "UNet",
    "UNetConfig",
]
