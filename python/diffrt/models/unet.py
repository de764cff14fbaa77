"""A small text-conditional UNet in the shape of Imagen's Efficient U-Net (Saharia et al. 2022,
App. B): ResBlocks with GroupNorm and a timestep scale-shift, skip connections scaled by 1/√2,
self- and cross-attention on text tokens (through :func:`diffrt.ops.attention`, with the text
padding mask) at chosen resolutions. Optional conditioning, each off by default:

- ``cond_image``: the full-resolution image + mask of Imagen Editor, through a learned strided conv
  (:class:`DownsampleCond`, zero-initialised: the model starts out equal to one without it),
  written into the channel slice of the input buffer;
- ``low_res_channels``: a low-resolution image (upsampled, concatenated) plus its noise-augmentation
  level added to the time embedding — the super-resolution stage of a cascade;
- ``image_embed_dim``: a CLIP image embedding, projected and added to the time embedding and into
  4 extra context tokens (the GLIDE-style unCLIP decoder, Ramesh et al. 2022 §2.1);
- ``pooled_text_dim``: a pooled caption embedding added to the time embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import PREDICTION_TYPES
from .downsample_cond import DownsampleCond
from .layers import timestep_embedding
from .serialization import SavableModel, check_config

SKIP_SCALE = 1 / math.sqrt(2)
NUM_IMAGE_EMBED_TOKENS = 4


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3
    out_channels: int = 3
    image_size: int = 32
    # The levels run on p×p pixel patches (pixel-unshuffle in, pixel-shuffle out): level sides are
    # image_size/p, image_size/2p, … — p² fewer positions per level for p²× wider input/output convs.
    patch_size: int = 1
    base_channels: int = 64
    channel_mult: Tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (16, 8)
    head_dim: int = 32
    groups: int = 8
    context_dim: Optional[int] = 128  # text token width; None: no cross-attention
    pooled_text_dim: Optional[int] = None
    prediction_type: str = "epsilon"
    # Imagen Editor image + mask conditioning
    cond_image: bool = False
    cond_image_size: int = 0  # full-resolution side of the conditioning image (0: image_size)
    cond_channels: int = 16
    # super-resolution stage
    low_res_channels: int = 0
    # unCLIP decoder
    image_embed_dim: Optional[int] = None

    def __post_init__(self):
        problems = check_config(self, {
            "in_channels": 1, "out_channels": 1, "image_size": 1, "patch_size": 1, "base_channels": 1,
            "channel_mult": 1, "num_res_blocks": 0, "attention_resolutions": 1, "head_dim": 1, "groups": 1,
            "context_dim": 1, "pooled_text_dim": 1, "cond_image_size": 0, "cond_channels": 1, "low_res_channels": 0,
            "image_embed_dim": 1})
        if not self.channel_mult:
            problems.append("channel_mult must not be empty")
        if self.image_embed_dim and self.context_dim is None:
            problems.append("image_embed_dim needs context_dim (the 4 extra context tokens)")
        if problems:  # the checks below assume positive sizes
            raise ValueError("invalid UNetConfig: " + "; ".join(problems))
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        widths = [self.base_channels * m for m in self.channel_mult] + [self.cond_channels if self.cond_image else self.groups]
        for w in widths:
            if w % self.groups:
                problems.append(f"channel count {w} is not divisible by groups={self.groups} (GroupNorm)")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            problems.append(f"patch_size {self.patch_size} must be >= 1 and divide image_size {self.image_size}")
        inner = self.inner_size
        resolutions = [inner >> i for i in range(len(self.channel_mult))]
        if inner % (1 << (len(self.channel_mult) - 1)):
            problems.append(f"image_size / patch_size = {inner} must be divisible by 2^{len(self.channel_mult) - 1}")
        missing = sorted(set(self.attention_resolutions) - set(resolutions))
        if missing:
            problems.append(f"attention_resolutions {missing} are not UNet resolutions (levels run at {resolutions})")
        for level, res in enumerate(resolutions):
            width = self.base_channels * self.channel_mult[level]
            if res in self.attention_resolutions and width % self.head_dim:
                problems.append(f"level width {width} at resolution {res} is not a multiple of head_dim {self.head_dim}")
        mid = self.base_channels * self.channel_mult[-1]
        if mid % self.head_dim:  # the middle block always attends
            problems.append(f"middle block width {mid} (base_channels × channel_mult[-1]) is not a multiple of "
                            f"head_dim {self.head_dim}")
        if self.cond_image and self.cond_side % self.image_size:
            problems.append(f"cond_image_size {self.cond_side} must be a multiple of image_size {self.image_size}")
        if problems:
            raise ValueError("invalid UNetConfig: " + "; ".join(problems))

    @property
    def inner_size(self) -> int:
        """Side of the first UNet level: image_size / patch_size."""
        return self.image_size // max(1, self.patch_size)

    @property
    def cond_side(self) -> int:
        """Side of the conditioning image and mask: cond_image_size, or image_size when that is 0."""
        return self.cond_image_size or self.image_size

    @property
    def cond_stride(self) -> int:
        """The downsampling conv's stride: conditioning side → first-level side."""
        return self.cond_side // self.inner_size


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, time embedding as scale and shift, GroupNorm → SiLU → conv, plus a
    (1×1-projected) skip, scaled by 1/√2 (Imagen's efficient U-Net)."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, cin), nn.GroupNorm(groups, cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return (h + self.skip(x)) * SKIP_SCALE


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions, then cross-attention to the text tokens (keys masked
    where the text is padding), both through diffrt's fused attention."""

    def __init__(self, channels: int, head_dim: int, groups: int, context_dim: Optional[int]):
        super().__init__()
        self.heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.cross = context_dim is not None
        if self.cross:
            self.norm_cross = nn.LayerNorm(channels)
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(context_dim, 2 * channels)
            self.proj_cross = nn.Linear(channels, channels)
            nn.init.zeros_(self.proj_cross.weight)
            nn.init.zeros_(self.proj_cross.bias)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor], context_mask: Optional[torch.Tensor]):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (self._heads(t) for t in self.qkv(tokens).chunk(3, dim=-1))
        a = ops.attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        y = x.flatten(2).transpose(1, 2) + self.proj(a)
        if self.cross and context is not None:
            q = self._heads(self.q(self.norm_cross(y)))
            k, v = (self._heads(t) for t in self.kv(context.to(y.dtype)).chunk(2, dim=-1))
            a = ops.attention(q, k, v, key_padding_mask=context_mask).transpose(1, 2).reshape(b, h * w, c)
            y = y + self.proj_cross(a)
        return y.transpose(1, 2).reshape(b, c, h, w)


class LevelBlock(nn.ModuleList):
    """A ResBlock, then an AttentionBlock at attention resolutions. An up-path block takes the
    matching down-path activation concatenated to its input (``takes_skip``)."""

    def __init__(self, res: ResBlock, attn: Optional[AttentionBlock], *, takes_skip: bool):
        super().__init__([res] if attn is None else [res, attn])
        self.takes_skip = takes_skip

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor],
                context_mask: Optional[torch.Tensor]) -> torch.Tensor:
        h = self[0](h, temb)
        return self[1](h, context, context_mask) if len(self) > 1 else h


class MidBlock(nn.ModuleList):
    """ResBlock → AttentionBlock → ResBlock at the lowest resolution."""

    takes_skip = False

    def __init__(self, attn: AttentionBlock, channels: int, time_dim: int, groups: int):
        super().__init__([ResBlock(channels, channels, time_dim, groups), attn,
                          ResBlock(channels, channels, time_dim, groups)])

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: Optional[torch.Tensor],
                context_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self[2](self[1](self[0](h, temb), context, context_mask), temb)


class Downsample(nn.Conv2d):
    """Stride-2 3×3 conv; takes (and ignores) the conditioning the other blocks take."""

    takes_skip = False

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor, *conditioning) -> torch.Tensor:
        return super().forward(h)


class Upsample(nn.Sequential):
    """Nearest ×2, then a 3×3 conv; takes (and ignores) the conditioning the other blocks take."""

    takes_skip = False

    def __init__(self, channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h: torch.Tensor, *conditioning) -> torch.Tensor:
        return super().forward(h)


class UNet(nn.Module, SavableModel):
    """``unet(x_t, t, cond)`` (a :class:`diffrt.Denoiser`); ``cond`` is a dict with, as configured:
    ``context`` (B, L, context_dim) and ``context_mask`` (B, L; True = token), ``pooled`` (B, D),
    ``image`` (B, 3, S, S) in [−1, 1] and ``mask`` (B, 1, S, S) (1 = repaint), ``low_res``
    (B, low_res_channels, h, w) with ``noise_level`` (B,) augmentation timesteps, ``image_embed`` (B, E)."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = c = config
        self.prediction_type = c.prediction_type
        self.in_channels, self.out_channels = c.in_channels, c.out_channels
        time_dim = 4 * c.base_channels
        self.time_embed = nn.Sequential(nn.Linear(c.base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.pooled_proj = nn.Linear(c.pooled_text_dim, time_dim) if c.pooled_text_dim else None
        self.noise_level_embed = (
            nn.Sequential(nn.Linear(c.base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
            if c.low_res_channels else None
        )
        if c.image_embed_dim:
            self.image_embed_time = nn.Linear(c.image_embed_dim, time_dim)
            self.image_embed_tokens = nn.Linear(c.image_embed_dim, NUM_IMAGE_EMBED_TOKENS * c.context_dim)
        self.cond_conv = None
        if c.cond_image:
            s = c.cond_stride
            self.cond_conv = DownsampleCond(c.cond_channels, kernel_size=s, stride=s)
        p2 = c.patch_size ** 2
        self.input_channels = (c.in_channels + c.low_res_channels) * p2 + (c.cond_channels if c.cond_image else 0)
        self.conv_in = nn.Conv2d(self.input_channels, c.base_channels, 3, padding=1)

        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        widths, ch, res = [c.base_channels], c.base_channels, c.inner_size
        # Each AttentionBlock is built before its ResBlock: the order fixes a seed's initial weights.
        for level, mult in enumerate(c.channel_mult):
            out = c.base_channels * mult
            for _ in range(c.num_res_blocks):
                attn = AttentionBlock(out, c.head_dim, c.groups, c.context_dim) if res in c.attention_resolutions else None
                self.down.append(LevelBlock(ResBlock(ch, out, time_dim, c.groups), attn, takes_skip=False))
                ch = out
                widths.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(Downsample(ch))
                widths.append(ch)
                res //= 2
        self.mid = MidBlock(AttentionBlock(ch, c.head_dim, c.groups, c.context_dim), ch, time_dim, c.groups)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            out = c.base_channels * mult
            for _ in range(c.num_res_blocks + 1):
                attn = AttentionBlock(out, c.head_dim, c.groups, c.context_dim) if res in c.attention_resolutions else None
                self.up.append(LevelBlock(ResBlock(ch + widths.pop(), out, time_dim, c.groups), attn, takes_skip=True))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.out_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def full_mask_condition(self, batch: int, *, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        """What text-to-image means for an image-conditioned UNet: the whole image to repaint (a zero
        image, an all-ones mask), as training's fully-masked samples show it. ``{}`` without ``cond_image``."""
        if not self.config.cond_image:
            return {}
        s = self.config.cond_side
        return {"image": torch.zeros(batch, 3, s, s, device=device, dtype=dtype),
                "mask": torch.ones(batch, 1, s, s, device=device, dtype=dtype)}

    def inpainting_condition(self, image: torch.Tensor, mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Imagen Editor's condition: the image with the region to repaint (mask = 1) removed, and the
        mask, both at the conditioning side (``config.cond_side``): an image of another size is
        area-resized, a mask area-resized and then set wherever any of its pixels was (> 0)."""
        if not self.config.cond_image:
            raise ValueError("this UNet takes no image condition (cond_image is False)")
        side = (self.config.cond_side,) * 2
        if image.shape[-2:] != side:
            image = F.interpolate(image, size=side, mode="area")
        if mask.shape[-2:] != side:
            mask = (F.interpolate(mask, size=side, mode="area") > 0).to(mask.dtype)
        return {"image": image * (1 - mask), "mask": mask}

    def _inputs(self, x_t: torch.Tensor, cond: Dict[str, Any]) -> torch.Tensor:
        c = self.config
        b, _, h, w = x_t.shape
        if (h, w) != (c.image_size, c.image_size):
            raise ValueError(f"x_t must be {c.image_size}×{c.image_size}, got {h}×{w}")
        parts = [x_t]
        if c.low_res_channels:
            low = cond["low_res"].to(x_t.dtype)
            parts.append(F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False, antialias=False))
        if c.patch_size > 1:
            parts = [F.pixel_unshuffle(torch.cat(parts, dim=1) if len(parts) > 1 else x_t, c.patch_size)]
            b, _, h, w = parts[0].shape
        if self.cond_conv is None:
            return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        image, mask = cond["image"].to(x_t.dtype), cond["mask"].to(x_t.dtype)
        side = c.cond_side
        if image.shape[-2:] != (side, side) or mask.shape[-2:] != (side, side):
            raise ValueError(f"image and mask must be {side}×{side}, got {tuple(image.shape[-2:])} and {tuple(mask.shape[-2:])}")
        # torch.compile cannot trace cat(out=<a slice>) (the compiler fuses this cat), and a torch.jit trace (what
        # OpenVINO converts) records the slice writes as ops its converter does not take
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return torch.cat([*parts, self.cond_conv(image, mask)], dim=1)
        # [x_t | low_res | cond]: the strided conv writes its channels straight into the buffer's slice.
        buf = x_t.new_empty(b, self.input_channels, h, w)
        torch.cat(parts, dim=1, out=buf[:, : self.input_channels - c.cond_channels])
        return self.cond_conv(image, mask, out=buf, channel_offset=self.input_channels - c.cond_channels)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        c = self.config
        cond = cond or {}
        x_t = x_t.to(self.conv_in.weight.dtype)  # a bfloat16 model takes float32 samples from the sampler
        temb = self.time_embed(timestep_embedding(t, c.base_channels).to(x_t.dtype))
        if self.pooled_proj is not None and cond.get("pooled") is not None:
            temb = temb + self.pooled_proj(cond["pooled"].to(x_t.dtype))
        if self.noise_level_embed is not None:
            temb = temb + self.noise_level_embed(timestep_embedding(cond["noise_level"], c.base_channels).to(x_t.dtype))
        context, context_mask = cond.get("context"), cond.get("context_mask")
        if c.image_embed_dim and cond.get("image_embed") is not None:
            emb = cond["image_embed"].to(x_t.dtype)
            temb = temb + self.image_embed_time(emb)
            extra = self.image_embed_tokens(emb).view(emb.shape[0], NUM_IMAGE_EMBED_TOKENS, c.context_dim)
            if context is None:
                context, context_mask = extra, None
            else:
                context = torch.cat([context.to(x_t.dtype), extra], dim=1)
                if context_mask is not None:
                    context_mask = torch.cat([context_mask, context_mask.new_ones(emb.shape[0], NUM_IMAGE_EMBED_TOKENS)], 1)
        h = self.conv_in(self._inputs(x_t, cond))
        skips = [h]
        for block in self.down:
            h = block(h, temb, context, context_mask)
            skips.append(h)
        h = self.mid(h, temb, context, context_mask)
        for block in self.up:
            if block.takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, temb, context, context_mask)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return F.pixel_shuffle(out, c.patch_size) if c.patch_size > 1 else out
