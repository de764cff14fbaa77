"""diffrt: a compiled diffusion sampling runtime."""

# torch first (diffrt's ops take torch tensors); diffrt._C links no OpenMP runtime of its own.
import torch  # noqa: F401

from . import _C
from . import ops, sampling, schedules
from .denoiser import Denoiser, FunctionDenoiser
from .sampling import ConstantGuidance, OscillatingGuidance, ddim_invert, ddim_sample
from .schedules import NoiseSchedule, SamplingSchedule

__version__ = _C.__version__

__all__ = [
    "ConstantGuidance",
    "Denoiser",
    "FunctionDenoiser",
    "NoiseSchedule",
    "OscillatingGuidance",
    "SamplingSchedule",
    "__version__",
    "ddim_invert",
    "ddim_sample",
    "ops",
    "sampling",
    "schedules",
]
