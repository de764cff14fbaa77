"""Imagen Editor's image+mask conditioning (Wang et al. 2023, §3.1): a learned strided conv over the
full-resolution [image | mask] whose output is written straight into a channel slice of the UNet
input buffer [x_t | cond] — no resize (bicubic left seams at the mask border), no separate concat.

    cond[n, c, oy, ox] = bias[c] + Σ_{ci, ky, kx} weight[c, ci, ky, kx] · x[n, ci, oy·s − p + ky, ox·s − p + kx]

x = [image | mask] along channels, zero outside the image (padding p); H' = ⌊(H + 2p − k)/s⌋ + 1.
Bytes moved: read N·Ck·H·W inputs and C·Ck·k² weights, write N·C·H'·W'.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _C
from . import _alloc, _checks, _launch
from ._autograd import direct
from ._backend import dispatch
from ._codes import DTYPES, math_dtype

__all__ = ["downsample_cond", "downsample_cond_ref"]


def _out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def downsample_cond_ref(
    image: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    stride: int,
    padding: int = 0,
    out: Optional[torch.Tensor] = None,
    channel_offset: int = 0,
) -> torch.Tensor:
    """torch.conv2d over torch.cat([image, mask]), in float32 at least (float64 when given it), then
    either returned as (N, C, H', W') or copied into out[:, channel_offset : channel_offset + C]."""
    dtype = image.dtype
    math = math_dtype(dtype)
    x = torch.cat([image.to(math), mask.to(math).expand(image.shape[0], -1, -1, -1)], dim=1)
    cond = F.conv2d(x, weight.to(math), None if bias is None else bias.to(math), stride=stride, padding=padding)
    if out is None:
        return cond.to(dtype)
    out.narrow(1, channel_offset, cond.shape[1]).copy_(cond)
    return out


# ---------------------------------------------------------------------------------------------
# Backends: each writes into `out` (if given) and returns it, or returns a new (N, C, H', W') tensor
# ---------------------------------------------------------------------------------------------


def _planes_dense(t: torch.Tensor) -> bool:
    """Each (H', W') plane of t is one dense row-major block (what the C++ kernel writes)."""
    return t.stride(3) == 1 and (t.shape[2] == 1 or t.stride(2) == t.shape[3])


_DOWNSAMPLE_COND = _launch.kernel("downsample_cond")


def _downsample_cpu(image, mask, weight, bias, stride, padding, out, channel_offset):
    image_, mask_, weight_ = image.contiguous(), mask.contiguous(), weight.contiguous()
    bias_ = None if bias is None else bias.contiguous()
    n, image_channels, h, w = image_.shape
    c, _, k, _ = weight_.shape
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    target, offset = out, channel_offset
    if out is None or not _planes_dense(out):
        target, offset = _alloc.empty((n, c, ho, wo), dtype=image.dtype, device=image.device), 0
    mask_channels = mask_.shape[1]
    args = _C.DownsampleCondArgs()
    args.dtype = DTYPES[image_.dtype]
    args.batch = n
    args.image_channels = image_channels
    args.mask_channels = mask_channels
    args.height = h
    args.width = w
    args.image = image_.data_ptr()
    args.mask = mask_.data_ptr()
    args.mask_batch_stride = mask_channels * h * w if mask_.shape[0] == n else 0  # 0: one mask for the batch
    args.weight = weight_.data_ptr()
    if bias_ is not None:
        args.bias = bias_.data_ptr()
    args.out_channels = c
    args.kernel_size = k
    args.stride = stride
    args.padding = padding
    args.out = target.data_ptr()
    args.out_batch_stride = target.stride(0)
    args.out_channel_stride = target.stride(1)
    args.channel_offset = offset
    _launch.run(_DOWNSAMPLE_COND, args, image_)
    if out is not None and target is not out:
        out.narrow(1, channel_offset, c).copy_(target)
        return out
    return target


def _downsample_triton(image, mask, weight, bias, stride, padding, out, channel_offset):
    from ..kernels.downsample_conv import downsample_conv  # imports triton: only when this backend runs

    if out is None:
        n, c = image.shape[0], weight.shape[0]
        ho, wo = _out_size(image.shape[2], weight.shape[2], stride, padding), _out_size(image.shape[3], weight.shape[3], stride, padding)
        out, channel_offset = _alloc.empty((n, c, ho, wo), dtype=image.dtype, device=image.device), 0
    return downsample_conv(image, mask, weight, bias, stride=stride, padding=padding, out=out,
                           channel_offset=channel_offset)


def _downsample_torch(image, mask, weight, bias, stride, padding, out, channel_offset):
    return downsample_cond_ref(image, mask, weight, bias, stride=stride, padding=padding, out=out,
                               channel_offset=channel_offset)


_IMPLS = {"triton": _downsample_triton, "cpu": _downsample_cpu, "torch": _downsample_torch}


# ---------------------------------------------------------------------------------------------
# Autograd (registered on the custom op in _library.py): the forward runs the chosen kernel; the
# backward is torch's conv backward
# ---------------------------------------------------------------------------------------------


def conv_grads(image, mask, weight, grad_cond, stride: int, padding: int, has_bias: bool, needs) -> tuple:
    """(grad_image, grad_mask, grad_weight, grad_bias): torch's conv backward over [image | mask]
    (``needs``: which of image, mask, weight, bias want a gradient; None for the others)."""
    n, image_channels = image.shape[0], image.shape[1]
    x = torch.cat([image, mask.expand(n, -1, -1, -1)], dim=1)
    need_x = needs[0] or needs[1]
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_cond.contiguous(), x, weight, [weight.shape[0]] if has_bias else None,
        [stride, stride], [padding, padding], [1, 1], False, [0, 0], 1,
        [need_x, needs[2], has_bias and needs[3]],
    )
    grad_image = grad_mask = None
    if need_x:
        grad_image = grad_x[:, :image_channels]
        grad_mask = grad_x[:, image_channels:]
        if mask.shape[0] != n:  # one mask broadcast over the batch: its gradient sums over the batch
            grad_mask = grad_mask.sum(dim=0, keepdim=True)
    return grad_image, grad_mask, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def downsample_cond(
    image: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    stride: int,
    padding: int = 0,
    out: Optional[torch.Tensor] = None,
    channel_offset: int = 0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Imagen Editor's conditioning: conv2d([image | mask], weight, bias, stride, padding), written
    into ``out[:, channel_offset : channel_offset + C]`` when ``out`` is given.

    Args:
        image: (N, Ci, H, W), float32 or bfloat16 on the CPU (float16 too with Triton on CUDA).
        mask: (N or 1, Cm, H, W), the dtype of ``image`` (or bool); one mask may serve the batch.
        weight: (C, Ci + Cm, k, k). bias: (C,) or None. Same dtype and device as ``image``.
        stride, padding: of the conv (k = s: patchify, e.g. 1024 → 64 with k = s = 16; k > s overlaps).
        out: the UNet input buffer (N, C_total, H', W'), e.g. with x_t already in its first channels;
            the conv result goes into channels [channel_offset, channel_offset + C) in place and
            ``out`` is returned. Without ``out`` a new (N, C, H', W') tensor is returned.

    Autograd: gradients reach image, mask, weight and bias. When any of them requires grad, the conv
    result is computed into a fresh tensor and copied into the slice of ``out`` with an autograd-tracked
    ``copy_``: gradients flowing into ``out``'s slice reach the conv, while the rest of ``out`` (x_t)
    keeps its own history (an ``out`` that requires grad is always written this way). ``out`` itself
    must not be a leaf that requires grad.

    Empty inputs: an empty batch gives the reference's empty result (``out`` returned unwritten); no
    input channels, no output channels or an image without pixels is an error (torch's conv2d has
    no answer for them either).
    """
    _checks.tensor("image", image, ndim=(4,))
    _checks.tensor("weight", weight, ndim=(4,))
    _checks.same_device_dtype("weight", weight, "image", image)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        mask = mask.to(image.dtype)
    _checks.tensor("mask", mask, ndim=(4,))
    _checks.same_device_dtype("mask", mask, "image", image)
    n, image_channels, h, w = image.shape
    if mask.shape[0] not in (1, n) or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"mask must have shape ({n} or 1, Cm, {h}, {w}) to go with image {tuple(image.shape)}, "
                         f"got {tuple(mask.shape)}")
    if image_channels + mask.shape[1] == 0:
        raise ValueError(f"image and mask must have at least one channel between them, got shapes "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
    if h == 0 or w == 0:  # torch's conv2d has no answer either; padding alone would make up an output
        raise ValueError(f"image must have at least one pixel, got shape {tuple(image.shape)}")
    c, in_channels, k, k2 = weight.shape
    if in_channels != image_channels + mask.shape[1]:
        raise ValueError(f"weight must have {image_channels + mask.shape[1]} input channels (image {image_channels} "
                         f"+ mask {mask.shape[1]}), got shape {tuple(weight.shape)}")
    if k != k2 or k == 0:
        raise ValueError(f"weight must be (C, Cin, k, k) with a square kernel, got shape {tuple(weight.shape)}")
    if c == 0:
        raise ValueError(f"weight must have at least one output channel, got shape {tuple(weight.shape)}")
    if bias is not None:
        _checks.tensor("bias", bias, ndim=(1,))
        _checks.same_device_dtype("bias", bias, "image", image)
        if bias.shape[0] != c:
            raise ValueError(f"bias must have shape ({c},) for {c} output channels, got {tuple(bias.shape)}")
    stride = _int("stride", stride, 1)
    padding = _int("padding", padding, 0)
    if min(h, w) + 2 * padding < k:
        raise ValueError(f"kernel_size {k} is larger than the padded image ({h}+{2 * padding}, {w}+{2 * padding})")
    ho, wo = _out_size(h, k, stride, padding), _out_size(w, k, stride, padding)
    channel_offset = _int("channel_offset", channel_offset, 0)
    if out is not None:
        _checks.tensor("out", out, ndim=(4,))
        _checks.same_device_dtype("out", out, "image", image)
        if out.shape[0] != n or out.shape[2:] != (ho, wo) or channel_offset + c > out.shape[1]:
            raise ValueError(f"out must have shape ({n}, >= channel_offset + {c} = {channel_offset + c}, {ho}, {wo}), "
                             f"got {tuple(out.shape)}")
    elif channel_offset != 0:
        raise ValueError(f"channel_offset must be 0 without out, got {channel_offset}")

    impl = dispatch("downsample_cond", _IMPLS, image.device, image.dtype, backend)
    if n == 0:  # an empty batch: the reference's empty result (nothing to write into `out`)
        return out if out is not None else image.new_empty((0, c, ho, wo))
    # Straight into `out`'s slice when nothing traces or differentiates the call. Otherwise the custom op
    # computes a fresh result, copied into the slice with a tracked copy_: an `out` that is part of a graph
    # (x_t written into it with grad) sees the write in its version counter and history.
    if direct(image, mask, weight, bias, out):
        return impl(image, mask, weight, bias, stride, padding, out, channel_offset)
    cond = torch.ops.diffrt.downsample_cond.default(image, mask, weight, bias, stride, padding, backend)
    if out is None:
        return cond
    out.narrow(1, channel_offset, c).copy_(cond)
    return out
