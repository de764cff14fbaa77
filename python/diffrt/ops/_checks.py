"""Input validation shared by the ops: every error names the argument it is about."""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

Scalar = Union[float, int, torch.Tensor]


def tensor(name: str, t, *, ndim: Optional[Sequence[int]] = None) -> torch.Tensor:
    if ndim is None and isinstance(t, torch.Tensor) and t.is_floating_point():
        return t
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.dim() not in ndim:
        want = " or ".join(str(n) for n in ndim)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    return t


def same_device_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype is ref.dtype and t.device == ref.device:
        return
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; put them on one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; cast one of them")


def same_shape(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")


def _real_value(name: str, v) -> float:
    """v as a float when it is a real scalar: a Python or numpy number, or a 0-d (or one-element)
    real tensor. bool is no number here (True would silently mean 1.0)."""
    if isinstance(v, torch.Tensor):
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a real number, got a tensor of dtype {v.dtype}")
        if v.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(v.shape)}")
        if v.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} has no gradient in diffrt.ops: pass a number or a tensor that does not "
                             f"require grad (e.g. {name}.detach()) instead of dropping its gradient silently")
        return float(v.detach().reshape(()).item())
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def finite(name: str, v) -> float:
    # The common case, kept cheap (ops run once per sampler step); comparisons rather than math.isfinite,
    # which torch.compile cannot trace on the symbolic floats it makes of float arguments.
    if type(v) is float and -math.inf < v < math.inf:
        return v
    v = _real_value(name, v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def per_sample_shape(name: str, v: torch.Tensor, n: int) -> torch.Tensor:
    """The checks of :func:`per_sample` that a tensor's metadata answers (its values are checked later)."""
    if v.dim() > 1 or v.numel() not in (1, n):
        raise ValueError(f"{name} must be a number or a 1-D tensor of {n} per-sample values, got shape {tuple(v.shape)}")
    if v.dtype == torch.bool or v.is_complex():
        raise TypeError(f"{name} must be real, got dtype {v.dtype}")
    return v


def per_sample(name: str, v: Scalar, n: int, *, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False) -> List[float]:
    """A real scalar or a 1-D tensor of n values (or 1) -> a list of n finite floats in [lo, hi] ((lo, hi]
    if lo_open). A tensor may require grad: the references differentiate through it (sampling._per_sample_view)."""
    if type(v) is float and -math.inf < v < math.inf and (lo < v if lo_open else lo <= v) and v <= hi:
        return [v] * n  # the common case, kept cheap
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        if v.dim() > 1 or v.numel() not in (1, n):
            raise ValueError(f"{name} must be a number or a 1-D tensor of {n} per-sample values, got shape {tuple(v.shape)}")
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be real, got dtype {v.dtype}")
        values = [float(x) for x in v.detach().reshape(-1).tolist()]
    elif isinstance(v, torch.Tensor):
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a real number, got a tensor of dtype {v.dtype}")
        values = [float(v.detach().item())]
    else:
        values = [_real_value(name, v)]
    for x in values:
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x}")
        if x < lo or x > hi or (lo_open and x == lo):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise ValueError(f"{name} must lie in {interval}, got {x}")
    return values * n if len(values) == 1 else values
