"""Mask blending and DiffEdit's mask estimate."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from . import _alloc, _checks
from ._backend import dispatch
from .sampling import _DTYPE_CODES, _cuda_launch_args, _math_dtype


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def mask_blend_ref(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = m·a + (1−m)·b, the mask (N or 1, 1, H, W) broadcast over channels (and batch)."""
    dtype = a.dtype
    m = mask.to(_math_dtype(dtype))
    return (m * a.to(m.dtype) + (1 - m) * b.to(m.dtype)).to(dtype)


def diffedit_mask_ref(
    eps_query: torch.Tensor, eps_ref: torch.Tensor, *, clamp_ratio: float = 3.0, threshold: Optional[float] = 0.5
) -> torch.Tensor:
    """DiffEdit mask (Couairon et al. 2022, §3.2) from noise predictions of n draws of one image
    (n, C, H, W) or of B images (B, n, C, H, W) → (1 or B, 1, H, W) float32:
    map = mean over draws and channels of |ε_q − ε_r|; map = min(map, ratio·mean(map)) / (ratio·mean(map))
    per image; binarised as map > threshold unless threshold is None."""
    q, r = eps_query, eps_ref
    if q.dim() == 4:
        q, r = q.unsqueeze(0), r.unsqueeze(0)
    dtype = _math_dtype(q.dtype)
    diff = (q.to(dtype) - r.to(dtype)).abs().mean(dim=(1, 2))  # (B, H, W)
    bound = clamp_ratio * diff.mean(dim=(1, 2), keepdim=True)
    soft = torch.where(bound > 0, torch.minimum(diff, bound) / bound.clamp_min(torch.finfo(dtype).tiny), 0.0)
    out = soft if threshold is None else (soft > threshold).to(dtype)
    return out.unsqueeze(1).to(torch.float32 if dtype != torch.float64 else dtype)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _blend_compiled(kernel, tail, mask, a, b):
    a_, b_ = a.contiguous(), b.contiguous()
    m = mask.to(a.dtype).contiguous()
    n, c = a_.shape[0], a_.shape[1]
    spatial = a_.numel() // (n * c)
    out = _alloc.empty_like(a_)
    kernel(
        _DTYPE_CODES[a_.dtype], n, c, spatial, m.data_ptr(), spatial if m.shape[0] == n and n > 1 else 0,
        a_.data_ptr(), b_.data_ptr(), out.data_ptr(), *tail,
    )
    return out


def _blend_cpu(mask, a, b):
    return _blend_compiled(_C.mask_blend, (torch.get_num_threads(),), mask, a, b)


def _blend_cuda(mask, a, b):
    return _blend_compiled(_C.cuda_mask_blend, _cuda_launch_args(a), mask, a, b)


_BLEND_IMPLS = {"cuda": _blend_cuda, "cpu": _blend_cpu, "torch": mask_blend_ref}


def mask_blend(
    mask: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    check_range: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """out = m·a + (1−m)·b (soft or binary mask; a binary mask returns a or b bit-exactly).

    Args:
        mask: (N or 1, 1, H, W), floating or bool, 1 selects ``a``; broadcast over channels and batch.
        a, b: (N, C, H, W), same shape, dtype and device.
        check_range: verify 0 ≤ mask ≤ 1 (one extra read of the mask).
    """
    _checks.tensor("a", a, ndim=(4,))
    _checks.tensor("b", b)
    _checks.same_device_dtype("b", b, "a", a)
    _checks.same_shape("b", b, "a", a)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"mask must be a floating-point or bool tensor, got dtype {mask.dtype}")
    if mask.device != a.device:
        raise ValueError(f"mask is on {mask.device} but a is on {a.device}; put them on one device")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, a.shape[0]) or mask.shape[2:] != a.shape[2:]:
        raise ValueError(
            f"mask must have shape ({a.shape[0]} or 1, 1, {a.shape[2]}, {a.shape[3]}) to blend a of shape "
            f"{tuple(a.shape)}, got {tuple(mask.shape)}"
        )
    if check_range and mask.is_floating_point():
        lo, hi = torch.aminmax(mask)
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise ValueError(f"mask values must lie in [0, 1], got min {lo.item()} max {hi.item()}")
    impl = dispatch("mask_blend", _BLEND_IMPLS, a.device, a.dtype, backend)
    return impl(mask, a, b)


def _diffedit_compiled(kernel, tail, q, r, clamp_ratio, threshold):
    q_, r_ = q.contiguous(), r.contiguous()
    if q_.dim() == 4:
        q_, r_ = q_.unsqueeze(0), r_.unsqueeze(0)
    bsz, draws, c, h, w = q_.shape
    out = _alloc.empty((bsz, 1, h, w), dtype=torch.float32, device=q.device)
    kernel(
        _DTYPE_CODES[q_.dtype], bsz, draws, c, h * w, q_.data_ptr(), r_.data_ptr(), out.data_ptr(),
        clamp_ratio, -1.0 if threshold is None else threshold, *tail,
    )
    return out


def _diffedit_cpu(q, r, clamp_ratio, threshold):
    return _diffedit_compiled(_C.diffedit_mask, (torch.get_num_threads(),), q, r, clamp_ratio, threshold)


def _diffedit_cuda(q, r, clamp_ratio, threshold):
    return _diffedit_compiled(_C.cuda_diffedit_mask, _cuda_launch_args(q), q, r, clamp_ratio, threshold)


def _diffedit_torch(q, r, clamp_ratio, threshold):
    return diffedit_mask_ref(q, r, clamp_ratio=clamp_ratio, threshold=threshold)


_DIFFEDIT_IMPLS = {"cuda": _diffedit_cuda, "cpu": _diffedit_cpu, "torch": _diffedit_torch}


def diffedit_mask(
    eps_query: torch.Tensor,
    eps_ref: torch.Tensor,
    *,
    clamp_ratio: float = 3.0,
    threshold: Optional[float] = 0.5,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """DiffEdit's mask estimate (Couairon et al. 2022, §3.2) in one fused reduction.

    Args:
        eps_query, eps_ref: noise predictions under the query and the reference text, for n noise
            draws of one image (n, C, H, W) or of B images (B, n, C, H, W).
        clamp_ratio: clamp the per-image map at clamp_ratio × its mean, then divide by that bound.
        threshold: binarise at map > threshold (in [0, 1]); None returns the soft map in [0, 1].

    Returns:
        float32 mask (1 or B, 1, H, W), ready for :func:`mask_blend`.
    """
    _checks.tensor("eps_query", eps_query, ndim=(4, 5))
    _checks.tensor("eps_ref", eps_ref)
    _checks.same_device_dtype("eps_ref", eps_ref, "eps_query", eps_query)
    _checks.same_shape("eps_ref", eps_ref, "eps_query", eps_query)
    if eps_query.numel() == 0:
        raise ValueError(f"eps_query must not be empty, got shape {tuple(eps_query.shape)}")
    clamp_ratio = _checks.finite("clamp_ratio", clamp_ratio)
    if clamp_ratio <= 0:
        raise ValueError(f"clamp_ratio must be > 0, got {clamp_ratio}")
    if threshold is not None:
        threshold = _checks.finite("threshold", threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1] (or be None for the soft map), got {threshold}")
    impl = dispatch("diffedit_mask", _DIFFEDIT_IMPLS, eps_query.device, eps_query.dtype, backend)
    return impl(eps_query, eps_ref, clamp_ratio, threshold)
