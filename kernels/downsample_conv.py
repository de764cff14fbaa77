"""Triton kernel of Imagen Editor's downsampling-conv conditioning (Wang et al. 2023, §3.1).

Every cascade stage sees the full-resolution image and mask through a learned strided conv (bicubic
resizing left seams at the mask border); its C output channels are written straight into
``out[:, channel_offset : channel_offset + C]``, the UNet input buffer ``[x_t | cond]``, so no
concatenation follows.

    out[n, off + c, oy, ox] = bias[c] + Σ_{ci, ky, kx} weight[c, ci, ky, kx] · x[n, ci, oy·s − p + ky, ox·s − p + kx]

with x = [image | mask] along channels, zero outside the image. One program computes a
(BLOCK_P output pixels) × (BLOCK_C channels) tile of one sample as a sum of tl.dot products over
(ky, kx) chunks of each input channel. Bytes moved: read N·Ck·H·W inputs (k = s: each once; k > s:
from cache) and C·Ck·k² weights, write N·C·H'·W'. Storage may be float32, float16 or bfloat16;
every load is widened to float32 (Triton's interpreter mis-computes bfloat16 arithmetic otherwise)
and the dot runs in IEEE float32.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _downsample_conv_kernel(
    image_ptr, mask_ptr, weight_ptr, bias_ptr, out_ptr,
    H, W, HO, WO, C, channel_offset,
    s_img_n, s_img_c, s_img_h, s_img_w,
    s_msk_n, s_msk_c, s_msk_h, s_msk_w,  # s_msk_n = 0: one mask for the whole batch
    s_w_c, s_w_i, s_w_h, s_w_w,
    s_out_n, s_out_c, s_out_h, s_out_w,
    IMAGE_CHANNELS: tl.constexpr, MASK_CHANNELS: tl.constexpr,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, PADDING: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = offs_p < HO * WO
    c_ok = offs_c < C
    oy = offs_p // WO
    ox = offs_p % WO
    iy0 = oy * STRIDE - PADDING
    ix0 = ox * STRIDE - PADDING

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    # x = [image | mask]: input channel ci of the conv is an image channel or a mask channel (the
    # branch is resolved at compile time, each unrolled channel reads one plane).
    for ci in tl.static_range(IMAGE_CHANNELS + MASK_CHANNELS):
        if ci < IMAGE_CHANNELS:
            plane = image_ptr + n * s_img_n + ci * s_img_c
            s_h = s_img_h
            s_w = s_img_w
        else:
            plane = mask_ptr + n * s_msk_n + (ci - IMAGE_CHANNELS) * s_msk_c
            s_h = s_msk_h
            s_w = s_msk_w
        # acc[p, c] += Σ_{ky, kx} plane[iy0[p] + ky, ix0[p] + kx] · weight[c, ci, ky, kx], (ky, kx) in
        # chunks of BLOCK_K; zero outside the image and past k².
        for k0 in range(0, KSIZE * KSIZE, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < KSIZE * KSIZE
            ky = offs_k // KSIZE
            kx = offs_k % KSIZE
            iy = iy0[:, None] + ky[None, :]
            ix = ix0[:, None] + kx[None, :]
            inside = p_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            x = tl.load(plane + iy * s_h + ix * s_w, mask=inside, other=0.0).to(tl.float32)
            w = tl.load(weight_ptr + offs_c[None, :] * s_w_c + ci * s_w_i + ky[:, None] * s_w_h + kx[:, None] * s_w_w,
                        mask=k_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(x, w, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]

    out_ptrs = (out_ptr + n * s_out_n + (channel_offset + offs_c[None, :]) * s_out_c
                + oy[:, None] * s_out_h + ox[:, None] * s_out_w)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


def _block(n: int, lo: int, hi: int) -> int:
    """The power of two ≥ n, clamped to [lo, hi] (tl.dot needs every block dimension ≥ 16)."""
    return max(lo, min(hi, triton.next_power_of_2(n)))


def downsample_conv(
    image: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    stride: int,
    padding: int = 0,
    out: Optional[torch.Tensor] = None,
    channel_offset: int = 0,
) -> torch.Tensor:
    """conv2d([image | mask], weight, bias, stride, padding) into out[:, channel_offset : channel_offset + C].

    image (N, Ci, H, W), mask (N or 1, Cm, H, W), weight (C, Ci + Cm, k, k), bias (C,) or None, all one
    dtype (float32, float16 or bfloat16) on one device; any strides. Without ``out`` a new
    (N, C, H', W') tensor is returned. Inputs are trusted: :func:`diffrt.ops.downsample_cond` checks them.
    """
    n, image_channels, h, w = image.shape
    mask_channels = mask.shape[1]
    c, _, k, _ = weight.shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    if out is None:
        out = torch.empty((n, c, ho, wo), dtype=image.dtype, device=image.device)
        channel_offset = 0
    block_p = _block(ho * wo, 16, 64)
    block_c = _block(c, 16, 64)
    block_k = _block(k * k, 16, 64)
    grid = (triton.cdiv(ho * wo, block_p), triton.cdiv(c, block_c), n)
    mask_batch_stride = 0 if mask.shape[0] == 1 else mask.stride(0)
    _downsample_conv_kernel[grid](
        image, mask, weight, bias if bias is not None else weight, out,
        h, w, ho, wo, c, channel_offset,
        *image.stride(),
        mask_batch_stride, *mask.stride()[1:],
        *weight.stride(),
        *out.stride(),
        IMAGE_CHANNELS=image_channels, MASK_CHANNELS=mask_channels,
        KSIZE=k, STRIDE=stride, PADDING=padding, HAS_BIAS=bias is not None,
        BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_K=block_k,
    )
    return out
