"""Drop-ins for the normalisation and activation modules of a diffusers UNet, run by diffrt's fused
kernels (:mod:`diffrt.ops.norm`): ``accelerate(pipe)`` swaps them in through its MODULE_SWAPS table.

Each is a subclass of the module it replaces, made by :meth:`from_module` from an existing instance
and sharing its parameters (same state-dict keys, same weights; a later dtype cast reaches both), so
isinstance checks and ``undo`` keep working. Only ``forward`` differs:

- ``nn.GroupNorm`` → :func:`diffrt.ops.group_norm` (one pass for the statistics, one to normalise);
- ``nn.LayerNorm`` over the last dim, with an affine of that size → :func:`diffrt.ops.layer_norm`;
- diffusers' ``GEGLU`` → its projection, then :func:`diffrt.ops.geglu` reading the (…, 2·D)
  projection once (hidden · gelu(gate), the exact erf gelu diffusers uses);
- diffusers' ``ResnetBlock2D`` → diffusers' forward step for step, except that norm1 → SiLU, and norm2 →
  SiLU when nothing comes between them (any time_embedding_norm but "scale_shift": "default", a VAE
  decoder's "group"), are one ``diffrt.ops.group_norm(..., activation="silu")`` pass each instead of a
  GroupNorm and a SiLU. A norm replaced later by one diffrt cannot fuse runs as diffusers runs it;
- diffusers' ``Timesteps`` → :func:`diffrt.ops.timestep_embedding` (float64 phases rounded once to
  float32, where diffusers rounds scale·t·freq to float32 first: at t ≈ 10³ its features are off by up
  to ~10⁻⁴, diffrt's by float32 rounding).

A module these cannot reproduce exactly (a LayerNorm over several dims or without affine, a GEGLU
subclass with its own forward, a ResnetBlock2D whose nonlinearity is not SiLU or whose norms are not
plain GroupNorms or carry hooks, a Timesteps whose frequencies divide by zero) is declined (the factory returns None)
and left as it was.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..ops.norm import geglu, group_norm, layer_norm, timestep_embedding, timestep_mlp

__all__ = ["DiffrtGroupNorm", "DiffrtLayerNorm", "diffrt_geglu", "diffrt_resnet_block", "diffrt_timesteps"]


def _adopt(cls, module: nn.Module) -> nn.Module:
    """An instance of ``cls`` (a subclass of type(module)) holding module's state: the same parameter and
    buffer tensors, hooks and attributes."""
    new = cls.__new__(cls)
    new.__dict__ = dict(module.__dict__)
    return new


class DiffrtGroupNorm(nn.GroupNorm):
    @classmethod
    def from_module(cls, norm: nn.GroupNorm) -> Optional["DiffrtGroupNorm"]:
        return _adopt(cls, norm) if type(norm) is nn.GroupNorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class DiffrtLayerNorm(nn.LayerNorm):
    @classmethod
    def from_module(cls, norm: nn.LayerNorm) -> Optional["DiffrtLayerNorm"]:
        if type(norm) is not nn.LayerNorm or len(norm.normalized_shape) != 1:
            return None
        return _adopt(cls, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


@functools.lru_cache(maxsize=None)
def _geglu_class() -> type:
    """diffusers' GEGLU with diffrt's forward (diffusers is imported only when a GEGLU is swapped)."""
    from diffusers.models.activations import GEGLU

    class DiffrtGEGLU(GEGLU):
        def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return geglu(self.proj(hidden_states))

    return DiffrtGEGLU


def diffrt_geglu(module: nn.Module) -> Optional[nn.Module]:
    """The DiffrtGEGLU drop-in for a diffusers GEGLU (None for anything else, a subclass included)."""
    cls = _geglu_class()
    return _adopt(cls, module) if type(module) is cls.__bases__[0] else None


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fusable_norm(norm: Optional[nn.Module]) -> bool:
    """A norm whose forward is exactly F.group_norm (torch's or diffrt's), with no hooks a fused call would skip."""
    return type(norm) in (nn.GroupNorm, DiffrtGroupNorm) and not _has_hooks(norm)


def _fusable_silu(activation: nn.Module) -> bool:
    return type(activation) is nn.SiLU and not _has_hooks(activation)


@functools.lru_cache(maxsize=None)
def _resnet_block_class() -> type:
    """diffusers' ResnetBlock2D with norm → SiLU fused (diffusers is imported only when one is swapped)."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.utils import deprecate

    class DiffrtResnetBlock2D(ResnetBlock2D):
        def _norm_silu(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
            # The norms may be swapped after this block (accelerate walks parents before children, and the
            # block shares its submodule table with the original): fuse what is a GroupNorm, run anything
            # else as diffusers does.
            if _fusable_norm(norm) and _fusable_silu(self.nonlinearity):
                return group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, activation="silu")
            return self.nonlinearity(norm(x))

        def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            # diffusers 0.42's ResnetBlock2D.forward, with norm1/norm2 → nonlinearity fused
            if len(args) > 0 or kwargs.get("scale", None) is not None:
                deprecate("scale", "1.0.0", (
                    "The `scale` argument is deprecated and will be ignored. Please remove it, as passing it will "
                    "raise an error in the future. `scale` should directly be passed while calling the underlying "
                    "pipeline component i.e., via `cross_attention_kwargs`."))

            hidden_states = self._norm_silu(self.norm1, input_tensor)

            if self.upsample is not None:
                if hidden_states.shape[0] >= 64:  # diffusers: upsample_nearest_nhwc fails on large batches
                    input_tensor = input_tensor.contiguous()
                    hidden_states = hidden_states.contiguous()
                input_tensor = self.upsample(input_tensor)
                hidden_states = self.upsample(hidden_states)
            elif self.downsample is not None:
                input_tensor = self.downsample(input_tensor)
                hidden_states = self.downsample(hidden_states)

            hidden_states = self.conv1(hidden_states)

            if self.time_emb_proj is not None:
                if not self.skip_time_act:
                    temb = self.nonlinearity(temb)
                temb = self.time_emb_proj(temb)[:, :, None, None]

            if self.time_embedding_norm == "default":
                if temb is not None:
                    hidden_states = hidden_states + temb
                hidden_states = self._norm_silu(self.norm2, hidden_states)
            elif self.time_embedding_norm == "scale_shift":  # GN(h)·(1 + scale) + shift, then SiLU
                if temb is None:
                    raise ValueError(
                        f" `temb` should not be None when `time_embedding_norm` is {self.time_embedding_norm}")
                time_scale, time_shift = torch.chunk(temb, 2, dim=1)
                hidden_states = self.norm2(hidden_states)
                hidden_states = hidden_states * (1 + time_scale) + time_shift
                hidden_states = self.nonlinearity(hidden_states)
            else:  # any other name (a VAE decoder's "group", with no temb): diffusers runs norm2, then SiLU
                hidden_states = self._norm_silu(self.norm2, hidden_states)

            hidden_states = self.dropout(hidden_states)
            hidden_states = self.conv2(hidden_states)

            if self.conv_shortcut is not None:
                if self.training:  # diffusers: contiguous only when training (DDP stride warnings)
                    input_tensor = input_tensor.contiguous()
                input_tensor = self.conv_shortcut(input_tensor)

            return (input_tensor + hidden_states) / self.output_scale_factor

    return DiffrtResnetBlock2D


def diffrt_resnet_block(module: nn.Module) -> Optional[nn.Module]:
    """The DiffrtResnetBlock2D drop-in for a diffusers ResnetBlock2D whose norm1/norm2 are GroupNorms (torch's
    or DiffrtGroupNorm) and whose nonlinearity is SiLU, none with hooks; None (left as it is) for anything else,
    a subclass included, or a time_embedding_norm of the conditioned norms ("ada_group", "spatial": diffusers'
    ResnetBlockCondNorm2D, which its ResnetBlock2D refuses to be built with)."""
    cls = _resnet_block_class()
    if type(module) is not cls.__bases__[0]:
        return None
    if not (_fusable_silu(module.nonlinearity) and _fusable_norm(module.norm1) and _fusable_norm(module.norm2)):
        return None
    if not isinstance(module.time_embedding_norm, str) or module.time_embedding_norm in ("ada_group", "spatial"):
        return None
    return _adopt(cls, module)


@functools.lru_cache(maxsize=None)
def _timesteps_class() -> type:
    from diffusers.models.embeddings import Timesteps

    class DiffrtTimesteps(Timesteps):
        def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
            # float32, as diffusers' get_timestep_embedding returns whatever the timesteps' dtype
            return timestep_embedding(timesteps, self.num_channels, bool(self.flip_sin_to_cos),
                                      self.downscale_freq_shift, self.scale)

    return DiffrtTimesteps


def diffrt_timesteps(module: nn.Module) -> Optional[nn.Module]:
    """The DiffrtTimesteps drop-in for a diffusers Timesteps (None for a subclass, a Timesteps with hooks, or
    one whose arguments diffusers turns into NaN: downscale_freq_shift == num_channels // 2)."""
    cls = _timesteps_class()
    if type(module) is not cls.__bases__[0] or _has_hooks(module):
        return None
    dim = module.num_channels
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        return None
    numbers = (module.downscale_freq_shift, module.scale)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        return None
    if dim // 2 >= 1 and dim // 2 == module.downscale_freq_shift:
        return None
    return _adopt(cls, module)


@functools.lru_cache(maxsize=None)
def _time_embedding_class() -> type:
    from diffusers.models.embeddings import TimestepEmbedding

    class DiffrtTimestepEmbedding(TimestepEmbedding):
        """Given the (N,) timesteps (what the UNet's get_time_embed returns under :func:`fuse_time_embedding`):
        the sinusoid of the UNet's time_proj, linear_1, SiLU and linear_2 as one ``timestep_mlp`` call, e and h
        kept in float32. Given (N, C) features: diffusers' forward."""

        sinusoid: Tuple[bool, float, float]  # (flip_sin_to_cos, downscale_freq_shift, scale) of the time_proj

        def forward(self, sample: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
            if sample.dim() != 1:
                return super().forward(sample, condition)
            if condition is not None:
                raise ValueError("timestep_cond needs a UNet built with time_cond_proj_dim (a TimestepEmbedding "
                                 "with cond_proj); this one has none")
            flip, shift, scale = self.sinusoid
            return timestep_mlp(sample, self.linear_1.weight, self.linear_1.bias, self.linear_2.weight,
                                self.linear_2.bias, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale)

    return DiffrtTimestepEmbedding


def _time_embedding_refusal(unet: nn.Module) -> Optional[str]:
    """Why the UNet's time_proj + time_embedding cannot run as one timestep_mlp call (None: it can)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import Timesteps

    embedding, proj = getattr(unet, "time_embedding", None), getattr(unet, "time_proj", None)
    if type(embedding) is not _time_embedding_class().__bases__[0]:
        return f"time_embedding is a {type(embedding).__name__}, not diffusers' TimestepEmbedding"
    if type(proj) is not _timesteps_class() and (type(proj) is not Timesteps or diffrt_timesteps(proj) is None):
        return "time_proj is not a diffusers Timesteps that diffrt_timesteps takes"
    if embedding.cond_proj is not None or embedding.post_act is not None or type(embedding.act) is not nn.SiLU:
        return "time_embedding has a cond_proj, a post_act or an activation other than SiLU"
    parts = (embedding, embedding.linear_1, embedding.act, embedding.linear_2)
    if any(type(m) is not nn.Linear for m in parts[1::2]) or any(_has_hooks(m) for m in parts):
        return "time_embedding's linear layers are not plain nn.Linear, or it has hooks"
    if embedding.linear_1.in_features != proj.num_channels:
        return "time_embedding's linear_1 does not take time_proj's features"
    if "get_time_embed" in vars(unet) or type(unet).get_time_embed is not UNet2DConditionModel.get_time_embed:
        return "the UNet's get_time_embed is not diffusers' own"
    return None


def fuse_time_embedding(unet: nn.Module) -> Tuple[Optional[Callable[[], None]], Optional[str]]:
    """Run a diffusers UNet2DConditionModel's time_proj + time_embedding (sinusoid, Linear, SiLU, Linear) as one
    ``diffrt.ops.timestep_mlp`` call: time_embedding becomes a DiffrtTimestepEmbedding (same parameters) and the
    UNet's get_time_embed returns the (N,) timesteps instead of their features. Returns (undo, None), or
    (None, why) with the UNet left as it was. time_proj stays in place for anything else that calls it."""
    why = _time_embedding_refusal(unet)
    if why is not None:
        return None, why
    original = unet.time_embedding
    fused = _adopt(_time_embedding_class(), original)
    proj = unet.time_proj
    fused.sinusoid = (bool(proj.flip_sin_to_cos), float(proj.downscale_freq_shift), float(proj.scale))

    def get_time_embed(sample: torch.Tensor, timestep) -> torch.Tensor:
        # diffusers' get_time_embed up to time_proj: the timestep as a 1-D tensor broadcast to the batch
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.dim() == 0:
            timesteps = timesteps[None].to(sample.device)
        return timesteps.expand(sample.shape[0])

    unet.time_embedding = fused
    unet.get_time_embed = get_time_embed  # an instance attribute: it shadows the class's method

    def undo() -> None:
        unet.time_embedding = original
        del unet.get_time_embed

    return undo, None
