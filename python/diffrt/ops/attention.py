"""Fused multi-head attention: softmax(scale·Q·Kᵀ + key-padding mask)·V.

``attention`` runs the compiled CPU kernel (csrc/cpu/attention_kernels.cpp: FlashAttention-style online
softmax, the Lq×Lk score matrix is never materialised; float32 and bfloat16) or, for CUDA tensors, the CUDA
kernel (csrc/cuda/attention_kernels.cu: shared-memory tiles, float32/bfloat16/float16, head dim ≤ 256, on
torch's current stream) and differentiates through its fused backward. A larger head dim on CUDA goes to the
next backend (an error with ``backend="cuda"``). ``attention_ref`` is the readable torch oracle (any floating
dtype, float64 included).

Shapes: q (B, H, Lq, d), k and v (B, H, Lk, d), key_padding_mask (B, Lk) bool with True = attend.
A query whose keys are all masked gets a zero output (not NaN) and zero gradients. Empty inputs (B, H, Lq
or Lk = 0) give empty outputs, or zeros for Lk = 0 (no key to attend to); a head dim of 0 is refused.

Non-finite inputs give what ``attention_ref`` gives on every backend and instruction set: masked keys take
no part at all (NaN/inf in their k or v changes nothing, and their gradients are 0); among attended keys,
torch's softmax rules: a NaN or +inf score, or scores that are all −inf, make the query's whole output row
NaN; a −inf score gives its key weight 0; a NaN/inf in v reaches the output columns it is multiplied into.
FLOPs: 4·B·H·Lq·Lk·d forward (two matrix products), 10·B·H·Lq·Lk·d backward (five, P recomputed).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _C
from . import _alloc, _backend, _checks, _launch
from ._autograd import direct
from ._codes import DTYPES

__all__ = ["attention", "attention_ref"]


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  key_padding_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """softmax(scale·q·kᵀ, masked keys → −inf)·v in q's dtype, materialising the (Lq, Lk) scores.

    Non-finite inputs follow torch's softmax: a NaN or +inf score among a row's attended keys, or attended
    scores that are all −inf, make the whole output row NaN; a −inf score gives its key weight 0 (and
    0·v, so a NaN/inf v of that key still makes NaN). Masked keys take no part at all: their k and v
    (finite or not) are never multiplied by anything, and their gradients are exactly 0.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if key_padding_mask is None:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    keep_kv = key_padding_mask[:, None, :, None].to(torch.bool)  # (B, 1, Lk, 1)
    k, v = k.masked_fill(~keep_kv, 0.0), v.masked_fill(~keep_kv, 0.0)  # 0·NaN would be NaN: remove them
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    keep = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, Lk)
    has_key = keep.any(dim=-1, keepdim=True)  # rows with at least one key to attend to
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(~has_key, 0.0)
    probs = torch.softmax(scores, dim=-1).masked_fill(~keep, 0.0)  # also zeroes the rows without keys
    return torch.matmul(probs, v)


def attention_ref_backward(q, k, v, dout, key_padding_mask, scale):
    """(dq, dk, dv) of attention_ref written out (the torch backend's backward): with P the reference's
    probabilities, dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(P∘dP)), dQ = scale·dS·K, dK = scale·dSᵀ·Q;
    masked keys get exactly zero gradients, as through the reference's masked_fill."""
    if key_padding_mask is None:
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)
    else:
        keep_kv = key_padding_mask[:, None, :, None].to(torch.bool)
        k, v = k.masked_fill(~keep_kv, 0.0), v.masked_fill(~keep_kv, 0.0)
        keep = key_padding_mask[:, None, None, :].to(torch.bool)
        has_key = keep.any(dim=-1, keepdim=True)
        scores = (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~keep, float("-inf")).masked_fill(~has_key, 0.0)
        probs = torch.softmax(scores, dim=-1).masked_fill(~keep, 0.0)
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    ds = probs * (dp - (probs * dp).sum(dim=-1, keepdim=True))
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    if key_padding_mask is not None:
        dk, dv = dk.masked_fill(~keep_kv, 0.0), dv.masked_fill(~keep_kv, 0.0)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              key_padding_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
              backend: Optional[str] = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention, fused (see the module docstring for shapes).

    scale defaults to 1/√d. backend: None (best available), "cuda" or "cpu" (compiled kernels) or "torch"
    (reference).
    """
    _checks.tensor("q", q, ndim=(4,))
    _checks.tensor("k", k, ndim=(4,))
    _checks.tensor("v", v, ndim=(4,))
    _checks.same_device_dtype("k", k, "q", q)
    _checks.same_device_dtype("v", v, "q", q)
    B, H, Lq, d = q.shape
    if k.shape[0] != B:
        raise ValueError(f"k must have batch size {B} like q, got shape {tuple(k.shape)}")
    if k.shape[1] != H:
        raise ValueError(f"k must have {H} heads like q, got shape {tuple(k.shape)}")
    if k.shape[3] != d:
        raise ValueError(f"k must have head dim {d} like q, got shape {tuple(k.shape)}")
    _checks.same_shape("v", v, "k", k)
    if d == 0:
        raise ValueError(f"q must have a nonzero head dim, got shape {tuple(q.shape)}")
    Lk = k.shape[2]
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(key_padding_mask).__name__}")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be a bool tensor (True = attend), got dtype {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(f"key_padding_mask must have shape (batch, kv_len) = {(B, Lk)}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    scale = 1.0 / math.sqrt(d) if scale is None else _checks.finite("scale", scale)

    inputs = (q, k, v, key_padding_mask, scale)
    impl = _backend.dispatch("attention", _IMPLS, q.device, q.dtype, backend, inputs)
    if direct(q, k, v):
        return impl(*inputs)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        # the forward that also returns lse, which the fused backward (diffrt::attention_backward) needs
        return torch.ops.diffrt.attention_forward.default(q, k, v, key_padding_mask, scale, backend)[0]
    return torch.ops.diffrt.attention.default(q, k, v, key_padding_mask, scale, backend)


def _attention_torch(q, k, v, key_padding_mask, scale):
    return attention_ref(q, k, v, key_padding_mask=key_padding_mask, scale=scale)


def attention_ref_with_lse(q, k, v, key_padding_mask, scale):
    """attention_ref and the float32 log-sum-exp of each query's attended scores (−inf without keys), the
    forward of the torch backend when autograd records it (its backward, attention_ref_backward, ignores lse)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).to(torch.float32) * scale
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1) if scores.shape[-1] else scores.new_full(scores.shape[:3], float("-inf"))
    return _attention_torch(q, k, v, key_padding_mask, scale).contiguous(), lse.contiguous()


def _cuda_refuses(q, k, v, key_padding_mask, scale):
    if q.shape[-1] > _C.CUDA_ATTENTION_MAX_HEAD_DIM:
        limit = _C.CUDA_ATTENTION_MAX_HEAD_DIM
        return f"the CUDA kernel supports head dims up to {limit}, got q of shape {tuple(q.shape)}"
    return None


def _attention_compiled(q, k, v, key_padding_mask, scale):
    """The CPU or CUDA kernel, after the device of q (the forward alone: autograd runs diffrt::attention_forward,
    which keeps lse for the fused backward)."""
    out, _ = _forward(q, k, v, key_padding_mask, scale, need_lse=False)
    return out


def _dense_last(t: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/row strides but need a dense head dim."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple:
    return t.stride()[:3]


def _set_shapes(args, q: torch.Tensor, k: torch.Tensor) -> None:
    """The fields the forward and backward structs share: dtype and sizes, from q (B, H, Lq, d) and k (B, H, Lk, d)."""
    args.dtype = DTYPES[q.dtype]
    args.batch, args.heads, args.q_len, args.head_dim = q.shape
    args.kv_len = k.shape[2]


def _mask_ptr(key_padding_mask: Optional[torch.Tensor]) -> tuple:
    if key_padding_mask is None:
        return None, 0
    mask = key_padding_mask.contiguous()  # bool is one byte of 0/1: read as uint8
    return mask, mask.data_ptr()


_FORWARD = _launch.kernel("attention_forward")
_BACKWARD = _launch.kernel("attention_backward")


def _forward(q, k, v, key_padding_mask, scale, *, need_lse: bool):
    q, k, v = _dense_last(q), _dense_last(k), _dense_last(v)
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    out = _alloc.empty((B, H, Lq, d), dtype=q.dtype, device=q.device)
    lse = _alloc.empty((B, H, Lq), dtype=torch.float32, device=q.device) if need_lse else None
    if out.numel() == 0:
        if lse is not None:
            lse.fill_(float("-inf"))
        return out, lse
    mask, mask_ptr = _mask_ptr(key_padding_mask)
    args = _C.AttentionForwardArgs()
    _set_shapes(args, q, k)
    args.q = q.data_ptr()
    args.k = k.data_ptr()
    args.v = v.data_ptr()
    args.q_strides = _strides(q)
    args.k_strides = _strides(k)
    args.v_strides = _strides(v)
    args.key_padding_mask = mask_ptr
    args.out = out.data_ptr()
    args.out_strides = _strides(out)
    if lse is not None:
        args.lse = lse.data_ptr()
    args.scale = float(scale)
    _launch.run(_FORWARD, args, q)
    del mask
    return out, lse


def fused_backward(q, k, v, out, dout, lse, key_padding_mask, scale):
    """(dq, dk, dv) from the fused backward kernel, which recomputes P from the forward's lse; CPU or CUDA
    kernel after the device of q."""
    q, k, v, dout = _dense_last(q), _dense_last(k), _dense_last(v), _dense_last(dout)
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    dq = _alloc.empty((B, H, Lq, d), dtype=q.dtype, device=q.device)
    dk = _alloc.empty((B, H, Lk, d), dtype=q.dtype, device=q.device)
    dv = _alloc.empty((B, H, Lk, d), dtype=q.dtype, device=q.device)
    if Lq == 0 or Lk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if out.numel():
        mask, mask_ptr = _mask_ptr(key_padding_mask)
        args = _C.AttentionBackwardArgs()
        _set_shapes(args, q, k)
        args.q = q.data_ptr()
        args.k = k.data_ptr()
        args.v = v.data_ptr()
        args.out = out.data_ptr()
        args.dout = dout.data_ptr()
        args.q_strides = _strides(q)
        args.k_strides = _strides(k)
        args.v_strides = _strides(v)
        args.out_strides = _strides(out)
        args.dout_strides = _strides(dout)
        args.key_padding_mask = mask_ptr
        args.lse = lse.data_ptr()
        args.dq = dq.data_ptr()
        args.dk = dk.data_ptr()
        args.dv = dv.data_ptr()
        args.scale = float(scale)
        _launch.run(_BACKWARD, args, q)
        del mask
    return dq, dk, dv


# The CUDA kernel first (for CUDA tensors with a head dim it supports), then the CPU kernel, then the reference.
_IMPLS = {
    "cuda": _backend.Limited(_attention_compiled, _cuda_refuses),
    "cpu": _attention_compiled,
    "torch": _attention_torch,
}
