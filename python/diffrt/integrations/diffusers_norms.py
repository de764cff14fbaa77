"""Drop-ins for the normalisation and activation modules of a diffusers UNet, run by diffrt's fused
kernels (:mod:`diffrt.ops.norm`): ``accelerate(pipe)`` swaps them in through its MODULE_SWAPS table.

Each is a subclass of the module it replaces, made by :meth:`from_module` from an existing instance
and sharing its parameters (same state-dict keys, same weights; a later dtype cast reaches both), so
isinstance checks and ``undo`` keep working. Only ``forward`` differs:

- ``nn.GroupNorm`` → :func:`diffrt.ops.group_norm` (one pass for the statistics, one to normalise);
- ``nn.LayerNorm`` over the last dim, with an affine of that size → :func:`diffrt.ops.layer_norm`;
- diffusers' ``GEGLU`` → its projection, then :func:`diffrt.ops.geglu` reading the (…, 2·D)
  projection once (hidden · gelu(gate), the exact erf gelu diffusers uses).

A module these cannot reproduce exactly (a LayerNorm over several dims or without affine, a GEGLU
subclass with its own forward) is declined (the factory returns None) and left as it was.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from ..ops.norm import geglu, group_norm, layer_norm

__all__ = ["DiffrtGroupNorm", "DiffrtLayerNorm", "diffrt_geglu"]


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
