"""Normalisation and activation ops of a UNet body: GroupNorm (+ SiLU), LayerNorm, diffusers' GEGLU, the
sinusoidal timestep embedding and the timestep-embedding MLP.

    group_norm  y = act((x − μ_g)/√(σ²_g + eps)·γ_c + β_c)   μ_g, σ²_g over (C/G channels × H·W) per sample
    layer_norm  y = (x − μ)/√(σ² + eps)·γ + β                 over the last dim
    geglu       y = a·gelu(g),  [a, g] = x.chunk(2, dim=-1),   gelu(v) = v/2·(1 + erf(v/√2))
    timestep_mlp  y = W2·SiLU(W1·sinusoid(t) + b1) + b2       diffusers' Timesteps + TimestepEmbedding

σ² is the biased variance (as torch's norms). Bytes moved (s bytes per element): group_norm reads x twice
and writes y (3·s per element), layer_norm reads each row once and writes it (2·s), geglu reads [a | g]
and writes y (3·s per output element).

Fusion chosen for diffusers' ResnetBlock2D: norm1 → SiLU and norm2 → SiLU are the pairs that meet on one
tensor, so ``activation="silu"`` fuses them. The block's residual add comes after conv2 (not after a
norm), so group_norm has no residual epilogue.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _C
from . import _alloc, _checks, _launch
from ._autograd import direct, needs_grad
from ._backend import dispatch
from ._codes import DTYPES, math_dtype

__all__ = ["geglu", "geglu_ref", "group_norm", "group_norm_ref", "layer_norm", "layer_norm_ref", "timestep_embedding",
           "timestep_embedding_ref", "timestep_mlp", "timestep_mlp_ref"]

ACTIVATIONS = (None, "silu")


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def group_norm_ref(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *,
                   activation: Optional[str] = None) -> torch.Tensor:
    """act(GroupNorm(x)·γ + β) for x (N, C, *), in float32 at least (float64 when given it)."""
    dtype = x.dtype
    math_t = math_dtype(dtype)
    n, c = x.shape[0], x.shape[1]
    v = x.to(math_t)
    groups = v.reshape(n, num_groups, -1)
    mean = groups.mean(dim=-1, keepdim=True)
    var = (groups - mean).square().mean(dim=-1, keepdim=True)  # two-pass: exact for any mean
    y = ((groups - mean) / torch.sqrt(var + eps)).reshape(v.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(math_t).reshape(shape)
    if bias is not None:
        y = y + bias.to(math_t).reshape(shape)
    if activation == "silu":
        y = y * torch.sigmoid(y)
    return y.to(dtype)


def layer_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim, in float32 at least (float64 when given it)."""
    dtype = x.dtype
    v = x.to(math_dtype(dtype))
    mean = v.mean(dim=-1, keepdim=True)
    var = (v - mean).square().mean(dim=-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(v.dtype)
    if bias is not None:
        y = y + bias.to(v.dtype)
    return y.to(dtype)


def geglu_ref(x: torch.Tensor) -> torch.Tensor:
    """diffusers' GEGLU after its projection: hidden, gate = x.chunk(2, -1); hidden·gelu(gate), exact (erf) gelu."""
    dtype = x.dtype
    a, g = x.to(math_dtype(dtype)).chunk(2, dim=-1)
    return (a * (0.5 * g * (1 + torch.erf(g * (1 / math.sqrt(2)))))).to(dtype)


def timestep_embedding_ref(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1.0, scale: float = 1.0, max_period: float = 10000.0, *,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diffusers' get_timestep_embedding in float64, then stored as ``dtype``: h = dim // 2,
    freq_j = exp(−ln(max_period)·j/(h − downscale_freq_shift)), [sin | cos](scale·t·freq) (cos first when
    flip_sin_to_cos), a zero column appended when dim is odd."""
    half = dim // 2
    j = torch.arange(half, dtype=torch.float64, device=timesteps.device)
    freq = torch.exp(-math.log(max_period) * j / (half - downscale_freq_shift))
    arg = scale * timesteps.to(torch.float64)[:, None] * freq[None, :]
    parts = [torch.cos(arg), torch.sin(arg)] if flip_sin_to_cos else [torch.sin(arg), torch.cos(arg)]
    if dim % 2:
        parts.append(torch.zeros_like(arg[:, :1]))
    return torch.cat(parts, dim=-1).to(dtype)


def timestep_mlp_ref(timesteps: torch.Tensor, weight_1: torch.Tensor, bias_1: Optional[torch.Tensor],
                     weight_2: torch.Tensor, bias_2: Optional[torch.Tensor], *, flip_sin_to_cos: bool = False,
                     downscale_freq_shift: float = 1.0, scale: float = 1.0,
                     max_period: float = 10000.0) -> torch.Tensor:
    """diffusers' Timesteps(in_dim, flip_sin_to_cos, downscale_freq_shift, scale) + TimestepEmbedding(act_fn="silu"):
    e = timestep_embedding(t, in_dim), h = SiLU(e·W1ᵀ + b1), out = h·W2ᵀ + b2, with in_dim = W1.shape[1]. In
    float32 at least (float64 when given float64 weights) without rounding e or h; out has the weights' dtype."""
    dtype = weight_1.dtype
    math_t = math_dtype(dtype)
    e = timestep_embedding_ref(timesteps, weight_1.shape[1], flip_sin_to_cos, downscale_freq_shift, scale, max_period,
                               dtype=math_t)
    h = torch.nn.functional.silu(torch.nn.functional.linear(
        e, weight_1.to(math_t), None if bias_1 is None else bias_1.to(math_t)))
    out = torch.nn.functional.linear(h, weight_2.to(math_t), None if bias_2 is None else bias_2.to(math_t))
    return out.to(dtype)


# ---------------------------------------------------------------------------------------------
# Compiled backends
# ---------------------------------------------------------------------------------------------


def _float32_or_zero(t: Optional[torch.Tensor]):
    """(the float32 copy the kernel reads or None, its address or 0)."""
    if t is None:
        return None, 0
    t32 = t.detach().to(torch.float32).contiguous()
    return t32, t32.data_ptr()


_GROUP_NORM = _launch.kernel("group_norm")


def _group_norm_compiled(x, num_groups, weight, bias, eps, silu):
    channels_last = False
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            channels_last = True
        else:
            x = x.contiguous()
    out = _alloc.empty_like(x)  # same memory format as x
    w32, w_ptr = _float32_or_zero(weight)  # w32, b32: alive until the kernel has run
    b32, b_ptr = _float32_or_zero(bias)
    args = _C.GroupNormArgs()
    args.dtype = DTYPES[x.dtype]
    args.batch = x.shape[0]
    args.channels = x.shape[1]
    args.spatial = math.prod(x.shape[2:])
    args.groups = num_groups
    args.channels_last = channels_last
    args.x = x.data_ptr()
    args.weight = w_ptr
    args.bias = b_ptr
    args.out = out.data_ptr()
    args.eps = eps
    args.silu = silu
    _launch.run(_GROUP_NORM, args, x)
    return out


def _group_norm_torch(x, num_groups, weight, bias, eps, silu):
    return group_norm_ref(x, num_groups, weight, bias, eps, activation="silu" if silu else None)


_GROUP_NORM_IMPLS = {"cuda": _group_norm_compiled, "cpu": _group_norm_compiled, "torch": _group_norm_torch}

_LAYER_NORM = _launch.kernel("layer_norm")


def _layer_norm_compiled(x, weight, bias, eps):
    x = x.contiguous()
    out = _alloc.empty_like(x)
    w32, w_ptr = _float32_or_zero(weight)  # w32, b32: alive until the kernel has run
    b32, b_ptr = _float32_or_zero(bias)
    dim = x.shape[-1]
    args = _C.LayerNormArgs()
    args.dtype = DTYPES[x.dtype]
    args.rows = x.numel() // dim if dim else math.prod(x.shape[:-1])
    args.dim = dim
    args.x = x.data_ptr()
    args.weight = w_ptr
    args.bias = b_ptr
    args.out = out.data_ptr()
    args.eps = eps
    _launch.run(_LAYER_NORM, args, x)
    return out


_LAYER_NORM_IMPLS = {"cuda": _layer_norm_compiled, "cpu": _layer_norm_compiled, "torch": layer_norm_ref}

_GEGLU = _launch.kernel("geglu")


def _geglu_compiled(x):
    x = x.contiguous()
    dim = x.shape[-1] // 2
    out = _alloc.empty((*x.shape[:-1], dim), dtype=x.dtype, device=x.device)
    args = _C.GegluArgs()
    args.dtype = DTYPES[x.dtype]
    args.rows = math.prod(x.shape[:-1])
    args.dim = dim
    args.x = x.data_ptr()
    args.out = out.data_ptr()
    _launch.run(_GEGLU, args, x)
    return out


_GEGLU_IMPLS = {"cuda": _geglu_compiled, "cpu": _geglu_compiled, "torch": geglu_ref}

_TIMESTEP_EMBEDDING = _launch.kernel("timestep_embedding")


def _set_sinusoid(args, flip, shift, scale, max_period) -> None:
    """The sinusoid fields TimestepEmbeddingArgs and TimestepMlpArgs share."""
    args.flip_sin_to_cos = flip
    args.downscale_freq_shift = shift
    args.scale = scale
    args.max_period = max_period


def _timestep_embedding_compiled(timesteps, dim, flip, shift, scale, max_period, dtype):
    t64 = timesteps.detach().to(torch.float64).contiguous()
    out = _alloc.empty((t64.shape[0], dim), dtype=dtype, device=t64.device)
    args = _C.TimestepEmbeddingArgs()
    args.dtype = DTYPES[dtype]
    args.batch = t64.shape[0]
    args.dim = dim
    args.timesteps = t64.data_ptr()
    args.out = out.data_ptr()
    _set_sinusoid(args, flip, shift, scale, max_period)
    _launch.run(_TIMESTEP_EMBEDDING, args, out)
    return out


def _timestep_embedding_torch(timesteps, dim, flip, shift, scale, max_period, dtype):
    return timestep_embedding_ref(timesteps, dim, flip, shift, scale, max_period, dtype=dtype)


_TIMESTEP_EMBEDDING_IMPLS = {"cuda": _timestep_embedding_compiled, "cpu": _timestep_embedding_compiled,
                             "torch": _timestep_embedding_torch}


_TIMESTEP_MLP = _launch.kernel("timestep_mlp")


def _timestep_mlp_compiled(timesteps, weight_1, bias_1, weight_2, bias_2, flip, shift, scale, max_period):
    t64 = timesteps.to(torch.float64).contiguous()
    w1, w2 = weight_1.contiguous(), weight_2.contiguous()  # alive until the kernel has run
    b1 = None if bias_1 is None else bias_1.contiguous()
    b2 = None if bias_2 is None else bias_2.contiguous()
    out = _alloc.empty((t64.shape[0], w2.shape[0]), dtype=w1.dtype, device=w1.device)
    args = _C.TimestepMlpArgs()
    args.dtype = DTYPES[w1.dtype]
    args.batch = t64.shape[0]
    args.in_dim = w1.shape[1]
    args.hidden_dim = w1.shape[0]
    args.out_dim = w2.shape[0]
    args.timesteps = t64.data_ptr()
    args.weight_1 = w1.data_ptr()
    args.bias_1 = 0 if b1 is None else b1.data_ptr()
    args.weight_2 = w2.data_ptr()
    args.bias_2 = 0 if b2 is None else b2.data_ptr()
    args.out = out.data_ptr()
    _set_sinusoid(args, flip, shift, scale, max_period)
    _launch.run(_TIMESTEP_MLP, args, out)
    return out


def _timestep_mlp_torch(timesteps, weight_1, bias_1, weight_2, bias_2, flip, shift, scale, max_period):
    return timestep_mlp_ref(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos=flip,
                            downscale_freq_shift=shift, scale=scale, max_period=max_period)


_TIMESTEP_MLP_IMPLS = {"cuda": _timestep_mlp_compiled, "cpu": _timestep_mlp_compiled, "torch": _timestep_mlp_torch}


def timestep_mlp_impl(device: torch.device, dtype: torch.dtype, backend: Optional[str]):
    """The timestep_mlp implementation for weights of ``dtype`` on ``device``. The CPU kernel only reads its
    weights (converted on load) and rounds out with the scalar float16 conversion, so it takes float16 besides
    the cpu backend's float32 / bfloat16 storage: float16 CPU weights are dispatched as the float32 kind."""
    kind = torch.float32 if dtype == torch.float16 and device.type == "cpu" else dtype
    return dispatch("timestep_mlp", _TIMESTEP_MLP_IMPLS, device, kind, backend)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _affine(name: str, t, size: int, x: torch.Tensor, what: str) -> None:
    if t is None:
        return
    _checks.tensor(name, t, ndim=(1,))
    if t.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},) (one value per {what}), got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")


def _eps(eps) -> float:
    eps = _checks.finite("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


def group_norm(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *, activation: Optional[str] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """GroupNorm with the activation that follows it fused: act(GroupNorm(x)·γ + β).

    Args:
        x: (N, C, *) — contiguous, or a 4-D channels-last tensor (read in place; the result is channels-last
            too). Other layouts are copied to contiguous first.
        num_groups: G ≥ 1 dividing C.
        weight, bias: γ, β of shape (C,) or None (any floating dtype; the kernels read them as float32).
        eps: added to the biased variance, ≥ 0.
        activation: None or ``"silu"`` (diffusers' ResnetBlock2D: norm1/norm2 → SiLU).

    Statistics are stable for any mean (chunked mean-shifted sums merged by Chan's formula). Autograd:
    the reference's gradients (recomputed in float32, or float64).
    """
    _checks.tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C, *) with at least 2 dimensions, got {tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups != 0:
        raise ValueError(f"num_groups must be >= 1 and divide the {channels} channels of x, got {num_groups}")
    _affine("weight", weight, channels, x, "channel")
    _affine("bias", bias, channels, x, "channel")
    eps = _eps(eps)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    silu = activation == "silu"
    impl = dispatch("group_norm", _GROUP_NORM_IMPLS, x.device, x.dtype, backend)
    if direct(x, weight, bias):
        return impl(x, num_groups, weight, bias, eps, silu)
    return torch.ops.diffrt.group_norm.default(x, num_groups, weight, bias, eps, silu, backend)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, *, backend: Optional[str] = None) -> torch.Tensor:
    """LayerNorm over the last dim: (x − μ)/√(σ² + eps)·γ + β (F.layer_norm(x, (D,), weight, bias, eps)).

    Args:
        x: (..., D); a non-contiguous x is copied to contiguous first.
        weight, bias: γ, β of shape (D,) or None (any floating dtype; the kernels read them as float32).
        eps: added to the biased variance, ≥ 0.
    """
    _checks.tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (the normalised one), got shape {tuple(x.shape)}")
    _affine("weight", weight, x.shape[-1], x, "element of the last dim")
    _affine("bias", bias, x.shape[-1], x, "element of the last dim")
    eps = _eps(eps)
    impl = dispatch("layer_norm", _LAYER_NORM_IMPLS, x.device, x.dtype, backend)
    if direct(x, weight, bias):
        return impl(x, weight, bias, eps)
    return torch.ops.diffrt.layer_norm.default(x, weight, bias, eps, backend)


def geglu(x: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """diffusers' GEGLU after its projection, reading the (..., 2·D) projection once:
    hidden, gate = x.chunk(2, dim=-1); out = hidden · gelu(gate) with the exact (erf) gelu → (..., D).

    Args:
        x: (..., 2·D), the output of GEGLU.proj; a non-contiguous x is copied to contiguous first.
    """
    _checks.tensor("x", x)
    if x.dim() < 1 or x.shape[-1] % 2 != 0:
        raise ValueError(f"x must have an even last dim (hidden and gate halves), got shape {tuple(x.shape)}")
    impl = dispatch("geglu", _GEGLU_IMPLS, x.device, x.dtype, backend)
    if direct(x):
        return impl(x)
    return torch.ops.diffrt.geglu.default(x, backend)


def _check_timesteps(timesteps, op: str) -> None:
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a torch.Tensor, got {type(timesteps).__name__}")
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must be a 1-D tensor (one per sample), got shape {tuple(timesteps.shape)}")
    if timesteps.dtype == torch.bool or timesteps.is_complex():
        raise TypeError(f"timesteps must be real, got dtype {timesteps.dtype}")
    if needs_grad(timesteps):
        raise ValueError(f"timesteps has no gradient in diffrt.ops.{op}: pass timesteps.detach() "
                         "instead of dropping its gradient silently")


def _sinusoid_params(dim: int, flip_sin_to_cos, downscale_freq_shift, scale, max_period):
    """The validated (downscale_freq_shift, scale, max_period) of a sinusoid of width dim."""
    if not isinstance(flip_sin_to_cos, bool):
        raise TypeError(f"flip_sin_to_cos must be a bool, got {type(flip_sin_to_cos).__name__}")
    shift = _checks.finite("downscale_freq_shift", downscale_freq_shift)
    if dim // 2 >= 1 and dim // 2 == shift:
        raise ValueError(f"downscale_freq_shift must differ from dim // 2 = {dim // 2} (the frequencies divide by "
                         f"their difference), got {shift}")
    scale = _checks.finite("scale", scale)
    max_period = _checks.finite("max_period", max_period)
    if max_period <= 0:
        raise ValueError(f"max_period must be > 0, got {max_period}")
    return shift, scale, max_period


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 1.0, scale: float = 1.0, max_period: float = 10000.0, *,
                       dtype: torch.dtype = torch.float32, backend: Optional[str] = None) -> torch.Tensor:
    """Sinusoidal timestep features, diffusers' ``get_timestep_embedding`` (same arguments and defaults) →
    (N, dim) of ``dtype``. Computed in float64 and rounded once, where diffusers computes the phases
    scale·t·freq in float32 (at t ≈ 10³ its sines are off by up to ~10⁻⁴); so the two agree to that error.

    Args:
        timesteps: 1-D tensor of N (possibly fractional) timesteps, any real dtype.
        dim: embedding width ≥ 1 (odd: a zero column is appended, as diffusers does).
        downscale_freq_shift: must differ from dim // 2 (diffusers divides by their difference: NaN there).
    """
    _check_timesteps(timesteps, "timestep_embedding")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    shift, scale, max_period = _sinusoid_params(dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    impl = dispatch("timestep_embedding", _TIMESTEP_EMBEDDING_IMPLS, timesteps.device, dtype, backend)
    if direct(timesteps):
        return impl(timesteps, dim, flip_sin_to_cos, shift, scale, max_period, dtype)
    return torch.ops.diffrt.timestep_embedding.default(timesteps, dim, flip_sin_to_cos, shift, scale, max_period,
                                                       dtype, backend)


def timestep_mlp(timesteps: torch.Tensor, weight_1: torch.Tensor, bias_1: Optional[torch.Tensor],
                 weight_2: torch.Tensor, bias_2: Optional[torch.Tensor], *, flip_sin_to_cos: bool = False,
                 downscale_freq_shift: float = 1.0, scale: float = 1.0, max_period: float = 10000.0,
                 backend: Optional[str] = None) -> torch.Tensor:
    """diffusers' ``Timesteps`` + ``TimestepEmbedding`` (act_fn "silu", no cond_proj, no post_act) in one call:
    e = timestep_embedding(t, in_dim, ...), h = SiLU(e·W1ᵀ + b1), out = h·W2ᵀ + b2 → (N, out_dim) of the
    weights' dtype. For a module pair ``time_proj``, ``time_embedding``::

        timestep_mlp(t, time_embedding.linear_1.weight, time_embedding.linear_1.bias,
                     time_embedding.linear_2.weight, time_embedding.linear_2.bias,
                     flip_sin_to_cos=time_proj.flip_sin_to_cos,
                     downscale_freq_shift=time_proj.downscale_freq_shift, scale=time_proj.scale)

    e and h stay float32 (diffusers rounds e to the weights' dtype and h after each layer), every dot product
    sums in float32 and out is rounded once; the sinusoid is computed in float64 (see timestep_embedding).

    Args:
        timesteps: 1-D tensor of N (possibly fractional) timesteps, any real dtype, on the weights' device.
        weight_1, bias_1: linear_1's (hidden_dim, in_dim) weight and (hidden_dim,) bias or None;
            in_dim is the sinusoid's width (Timesteps.num_channels).
        weight_2, bias_2: linear_2's (out_dim, hidden_dim) weight and (out_dim,) bias or None.
            All four share one floating dtype (float32, bfloat16 or float16 run compiled; any other the
            reference) and device.
        flip_sin_to_cos, downscale_freq_shift, scale, max_period: the sinusoid's (timestep_embedding's).

    Autograd: the weights' gradients are the reference's (recomputed in float32, or float64); timesteps has none.
    """
    _check_timesteps(timesteps, "timestep_mlp")
    _checks.tensor("weight_1", weight_1, ndim=(2,))
    _checks.tensor("weight_2", weight_2, ndim=(2,))
    hidden_dim, in_dim = weight_1.shape
    if min(in_dim, hidden_dim, weight_2.shape[0]) < 1:
        raise ValueError(f"weight_1 and weight_2 must be non-empty, got shapes {tuple(weight_1.shape)} and "
                         f"{tuple(weight_2.shape)}")
    if weight_2.shape[1] != hidden_dim:
        raise ValueError(f"weight_2 must have shape (out_dim, {hidden_dim}) (it reads linear_1's {hidden_dim} "
                         f"outputs), got {tuple(weight_2.shape)}")
    _checks.same_device_dtype("weight_2", weight_2, "weight_1", weight_1)
    for name, bias, size in (("bias_1", bias_1, hidden_dim), ("bias_2", bias_2, weight_2.shape[0])):
        if bias is None:
            continue
        _checks.tensor(name, bias, ndim=(1,))
        if bias.shape[0] != size:
            raise ValueError(f"{name} must have shape ({size},), got {tuple(bias.shape)}")
        _checks.same_device_dtype(name, bias, "weight_1", weight_1)
    if timesteps.device != weight_1.device:
        raise ValueError(f"timesteps is on {timesteps.device} but weight_1 is on {weight_1.device}; put them on "
                         "one device")
    shift, scale, max_period = _sinusoid_params(in_dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period)
    impl = timestep_mlp_impl(weight_1.device, weight_1.dtype, backend)
    if direct(timesteps, weight_1, bias_1, weight_2, bias_2):
        return impl(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos, shift, scale, max_period)
    return torch.ops.diffrt.timestep_mlp.default(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos, shift,
                                                 scale, max_period, backend)
