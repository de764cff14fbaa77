"""DownsampleCond: Imagen Editor's learned downsampling of the conditioning image and mask (Wang et
al. 2023, §3.1), the module every cascade stage puts in front of its UNet.

The full-resolution [image | mask] goes through a strided conv (1024 → 64: k = s = 16; 1024 → 256:
k = s = 4) whose output fills the conditioning channels of the UNet input [x_t | cond] in place.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import ops


class DownsampleCond(nn.Module):
    """Strided conv over [image (3 ch) | mask (1 ch)] → ``out_channels``, built on :func:`diffrt.ops.downsample_cond`.

    With ``zero_init`` (the default) weight and bias start at zero, so the conditioning channels are
    exactly zero and a UNet given them behaves as the text-to-image model it was fine-tuned from (the
    paper's zero-initialised new input channels). The gradient to this conv's weights is
    ∂L/∂cond · x, which is non-zero only if the UNet's first layer has non-zero weights on the
    conditioning channels — zero-initialise here or there, not both, or neither ever learns.
    """

    def __init__(self, out_channels: int, kernel_size: int, stride: int, padding: int = 0, *, in_channels: int = 4,
                 zero_init: bool = True, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.zero_init = zero_init
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.zero_init:
            nn.init.zeros_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
            return
        # nn.Conv2d's default initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, out: Optional[torch.Tensor] = None,
                channel_offset: int = 0) -> torch.Tensor:
        """image (N, in_channels − Cm, H, W) and mask (N or 1, Cm, H, W) → (N, out_channels, H', W'), or
        written into out[:, channel_offset : channel_offset + out_channels] and ``out`` returned."""
        return ops.downsample_cond(image, mask, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                   out=out, channel_offset=channel_offset)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, zero_init={self.zero_init}, bias={self.bias is not None}")
