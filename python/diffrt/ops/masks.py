"""Mask blending and DiffEdit's mask estimate."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _C
from . import _alloc, _checks, _launch
from ._autograd import direct, tracing
from ._backend import dispatch
from ._codes import DTYPES, math_dtype

__all__ = ["diffedit_mask", "diffedit_mask_ref", "mask_blend", "mask_blend_ref"]


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def mask_blend_ref(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """out = m·a + (1−m)·b, the mask (N or 1, 1, H, W) broadcast over channels (and batch); exactly a
    where m = 1 and b where m = 0, whatever the other holds (0·inf would be NaN)."""
    dtype = a.dtype
    m = mask.to(math_dtype(dtype))
    a_, b_ = a.to(m.dtype), b.to(m.dtype)
    return torch.where(m == 1, a_, torch.where(m == 0, b_, m * a_ + (1 - m) * b_)).to(dtype)


def diffedit_mask_ref(
    eps_query: torch.Tensor, eps_ref: torch.Tensor, *, clamp_ratio: float = 3.0, threshold: Optional[float] = 0.5
) -> torch.Tensor:
    """DiffEdit mask (Couairon et al. 2022, §3.2) from noise predictions of n draws of one image
    (n, C, H, W) or of B images (B, n, C, H, W) → (1 or B, 1, H, W) float32:
    map = mean over draws and channels of |ε_q − ε_r|; map = min(map, ratio·mean(map)) / (ratio·mean(map))
    per image (0 where the bound is 0: identical predictions); binarised as map > threshold unless
    threshold is None. A NaN in an image's predictions makes its map NaN everywhere, thresholded or not
    (the bound is NaN): a loud result instead of a silently empty mask."""
    q, r = eps_query, eps_ref
    if q.dim() == 4:
        q, r = q.unsqueeze(0), r.unsqueeze(0)
    dtype = math_dtype(q.dtype)
    diff = (q.to(dtype) - r.to(dtype)).abs().mean(dim=(1, 2))  # (B, H, W)
    bound = clamp_ratio * diff.mean(dim=(1, 2), keepdim=True)
    empty = bound == 0  # divide by 1 there, so that no 0/0 reaches the values or the gradient
    soft = torch.where(empty, 0.0, torch.minimum(diff, bound) / torch.where(empty, 1.0, bound))
    out = soft if threshold is None else torch.where(soft.isnan(), torch.nan, (soft > threshold).to(dtype))
    return out.unsqueeze(1).to(torch.float32 if dtype != torch.float64 else dtype)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


_MASK_BLEND = _launch.kernel("mask_blend")


def _blend_compiled(mask, a, b):
    """The CPU or CUDA kernel, after the device of ``a``."""
    a_, b_ = a.contiguous(), b.contiguous()
    m = mask.to(a.dtype).contiguous()
    n, c = a_.shape[0], a_.shape[1]
    spatial = a_.shape[2] * a_.shape[3]
    out = _alloc.empty_like(a_)
    args = _C.MaskBlendArgs()
    args.dtype = DTYPES[a_.dtype]
    args.batch = n
    args.channels = c
    args.spatial = spatial
    args.mask = m.data_ptr()
    args.mask_batch_stride = spatial if m.shape[0] == n and n > 1 else 0  # 0: one mask for the batch
    args.a = a_.data_ptr()
    args.b = b_.data_ptr()
    args.out = out.data_ptr()
    _launch.run(_MASK_BLEND, args, a_)
    return out


_BLEND_IMPLS = {"cuda": _blend_compiled, "cpu": _blend_compiled, "torch": mask_blend_ref}


def mask_blend_grads(mask, a, b, grad, needs):
    """The backward of out = m·a + (1−m)·b written out (``needs``: which of mask, a, b want a gradient):
    ∂/∂a = m, ∂/∂b = 1 − m, ∂/∂m = Σ_c (a − b) (and Σ over the batch for a shared mask) — the
    formula's derivative also where m is exactly 0 or 1 (where the forward selects)."""
    dtype = math_dtype(a.dtype)
    m, g = mask.to(dtype), grad.to(dtype)
    grad_mask = grad_a = grad_b = None
    if needs[1]:
        grad_a = (g * m).to(a.dtype)
    if needs[2]:
        grad_b = (g * (1 - m)).to(b.dtype)
    if needs[0]:
        grad_mask = (g * (a.to(dtype) - b.to(dtype))).sum(dim=1, keepdim=True)
        if mask.shape[0] != grad_mask.shape[0]:
            grad_mask = grad_mask.sum(dim=0, keepdim=True)
        grad_mask = grad_mask.to(mask.dtype)
    return grad_mask, grad_a, grad_b


def check_mask_range(mask: torch.Tensor) -> None:
    """Raises unless every value of a floating mask lies in [0, 1] (a NaN does not)."""
    if mask.numel() == 0:
        return
    lo, hi = torch.aminmax(mask)
    if not (lo >= 0 and hi <= 1):  # also catches NaN
        raise ValueError(f"mask values must lie in [0, 1], got min {lo.item()} max {hi.item()}")


def mask_blend(
    mask: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    check_range: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """out = m·a + (1−m)·b (soft or binary mask).

    Where the mask is exactly 1 the result is ``a``, where it is exactly 0 it is ``b`` — bit for bit,
    whatever the other input holds (an inf or NaN in the unselected input does not leak through
    0·inf); elsewhere m·a + (1−m)·b with IEEE arithmetic (a NaN mask value gives NaN). Empty inputs
    (batch, channels or pixels 0) give an empty result. Autograd: gradients reach ``a``, ``b`` and a
    floating ``mask`` (∂/∂m = Σ_c (a − b), also at m = 0 or 1).

    Args:
        mask: (N or 1, 1, H, W), floating or bool, 1 selects ``a``; broadcast over channels and batch.
        a, b: (N, C, H, W), same shape, dtype and device.
        check_range: verify 0 ≤ mask ≤ 1 (one extra read of the mask), raising ValueError otherwise; under
            torch.compile / export the custom op runs the check when the graph runs (no graph break).
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
    check_range = bool(check_range) and mask.is_floating_point()
    if check_range and not tracing():
        check_mask_range(mask)
        check_range = False
    # traced (torch.compile, export): the values exist only when the graph runs, so the custom op checks them
    # then (a check here would read them back at trace time and break the graph)
    impl = dispatch("mask_blend", _BLEND_IMPLS, a.device, a.dtype, backend)
    if not check_range and direct(mask, a, b):
        return impl(mask, a, b)
    return torch.ops.diffrt.mask_blend.default(mask, a, b, backend, check_range)


_DIFFEDIT_MASK = _launch.kernel("diffedit_mask")


def _diffedit_compiled(q, r, clamp_ratio, threshold):
    """The CPU or CUDA kernel, after the device of ``q``."""
    q_, r_ = q.contiguous(), r.contiguous()
    if q_.dim() == 4:
        q_, r_ = q_.unsqueeze(0), r_.unsqueeze(0)
    bsz, draws, c, h, w = q_.shape
    out = _alloc.empty((bsz, 1, h, w), dtype=torch.float32, device=q.device)
    args = _C.DiffEditMaskArgs()
    args.dtype = DTYPES[q_.dtype]
    args.batch = bsz
    args.draws = draws
    args.channels = c
    args.spatial = h * w
    args.eps_query = q_.data_ptr()
    args.eps_ref = r_.data_ptr()
    args.out = out.data_ptr()
    args.clamp_ratio = clamp_ratio
    args.threshold = -1.0 if threshold is None else threshold  # negative: the soft map
    _launch.run(_DIFFEDIT_MASK, args, q_)
    return out


def _diffedit_torch(q, r, clamp_ratio, threshold):
    return diffedit_mask_ref(q, r, clamp_ratio=clamp_ratio, threshold=threshold)


_DIFFEDIT_IMPLS = {"cuda": _diffedit_compiled, "cpu": _diffedit_compiled, "torch": _diffedit_torch}


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
        float32 mask (1 or B, 1, H, W), ready for :func:`mask_blend`. An image whose predictions hold a
        NaN gets a map that is NaN everywhere (thresholded or not), never a silently empty mask.
        Empty images (H or W 0) and an empty batch give an empty map; no draws or no channels is an error.

    Autograd: the soft map (``threshold=None``) is differentiable (the reference's gradient). The
    thresholded map is a step function of the inputs — zero gradient almost everywhere — and, like its
    reference and torch's ``(x > t).float()``, is returned as a constant that does not require grad.
    """
    _checks.tensor("eps_query", eps_query, ndim=(4, 5))
    _checks.tensor("eps_ref", eps_ref)
    _checks.same_device_dtype("eps_ref", eps_ref, "eps_query", eps_query)
    _checks.same_shape("eps_ref", eps_ref, "eps_query", eps_query)
    draws_and_channels = eps_query.shape[-4:-2]
    if 0 in draws_and_channels:
        raise ValueError(f"eps_query must hold at least one noise draw and one channel (the map is their mean), "
                         f"got shape {tuple(eps_query.shape)}")
    clamp_ratio = _checks.finite("clamp_ratio", clamp_ratio)
    if clamp_ratio <= 0:
        raise ValueError(f"clamp_ratio must be > 0, got {clamp_ratio}")
    if threshold is not None:
        threshold = _checks.finite("threshold", threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1] (or be None for the soft map), got {threshold}")
    impl = dispatch("diffedit_mask", _DIFFEDIT_IMPLS, eps_query.device, eps_query.dtype, backend)
    if threshold is not None:  # a constant: no graph to record
        eps_query, eps_ref = eps_query.detach(), eps_ref.detach()
    if direct(eps_query, eps_ref):
        return impl(eps_query, eps_ref, clamp_ratio, threshold)
    return torch.ops.diffrt.diffedit_mask.default(eps_query, eps_ref, clamp_ratio, threshold, backend)
