"""diffrt.models: the trainable modules of diffrt's pipelines."""

from .downsample_cond import DownsampleCond

__all__ = ["DownsampleCond"]
