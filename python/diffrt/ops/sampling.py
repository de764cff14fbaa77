"""DDIM step and inversion with fused classifier-free guidance, the guidance combination alone, and the
σ-space steps of Euler, Euler ancestral and DPM-Solver++(2M).

Each op: a readable torch reference (``*_ref``, exact in float64) that is the oracle, and the entry
point that validates its inputs and dispatches to a backend (C++ CPU kernels, or the reference) —
directly, or through its custom op ``torch.ops.diffrt.*`` (_library.py) when traced or differentiated.
Tensors of per-sample ᾱ, w or σ that require grad take the autograd.Function route (and, under
torch.compile, a graph break: their values are read on the host).
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional

import torch

from .. import _C
from . import _alloc, _checks, _launch
from ._autograd import direct, needs_grad, tracing, with_reference_gradients
from ._backend import dispatch
from ._checks import Scalar
from ._codes import DTYPES, PREDICTION_TYPES, PREDICTIONS, ClipMode, math_dtype

__all__ = ["PREDICTION_TYPES", "SOLVER_TYPES", "cfg_combine", "cfg_combine_ref", "ddim_invert_step",
           "ddim_invert_step_ref", "ddim_step", "ddim_step_ref", "dpm_solver_2m_step", "dpm_solver_2m_step_ref",
           "euler_step", "euler_step_ref"]


class Checked(NamedTuple):
    """Per-sample values (a float64 tensor of N values) an entry point or op has already checked: the
    references take them without reading them back to the host (which tracing cannot)."""

    values: torch.Tensor


def _per_sample_view(name: str, v: Scalar, like: torch.Tensor, **limits) -> torch.Tensor:
    """Validated per-sample scalars (a number or N values) as an (N, 1, ..., 1) tensor that broadcasts
    over one sample's elements. A tensor stays in the graph: the references differentiate through ᾱ and w."""
    n = like.shape[0]
    shape = (n, *([1] * (like.dim() - 1)))
    if type(v) is list:  # per-sample floats an entry point has validated (the custom ops' backward)
        return torch.tensor(v, dtype=like.dtype, device=like.device).view(shape)
    if type(v) is Checked:
        return v.values.to(dtype=like.dtype, device=like.device).view(shape)
    values = _checks.per_sample(name, v, n, **limits)
    if isinstance(v, torch.Tensor):
        return v.to(dtype=like.dtype, device=like.device).reshape(-1).expand(n).reshape(shape)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


def cfg_combine_ref(model_output: torch.Tensor, guidance_scale: Scalar, *, guidance_rescale: float = 0.0) -> torch.Tensor:
    """ε̃ = ε_u + w·(ε_c − ε_u) from the batched [uncond; cond] output (Ho & Salimans 2022), then
    guidance rescale (Lin et al. 2023): ε̃ ← φ·ε̃·std(ε_c)/std(ε̃) + (1−φ)·ε̃ = ε̃·(φ·std(ε_c)/std(ε̃) + 1 − φ),
    std per sample (unbiased). A constant ε̃ (std 0) is left as it is; a NaN std (a NaN or inf in the
    sample) makes the sample NaN, as in diffusers."""
    dtype = model_output.dtype
    half = model_output.shape[0] // 2
    uncond, cond = model_output.to(math_dtype(dtype)).split([half, half])
    w = _per_sample_view("guidance_scale", guidance_scale, uncond)
    guided = uncond + w * (cond - uncond)
    if guidance_rescale != 0.0 and math.prod(guided.shape[1:]) > 1 and half > 0:  # one element has no spread
        dims = list(range(1, guided.dim()))
        std_cond = cond.std(dim=dims, keepdim=True)
        std_cfg = guided.std(dim=dims, keepdim=True)
        constant = std_cfg == 0  # factor 1 instead of a division by 0
        ratio = torch.where(constant, 1.0, std_cond / torch.where(constant, 1.0, std_cfg))
        guided = guided * (guidance_rescale * ratio + (1.0 - guidance_rescale))
    return guided.to(dtype)


def ddim_step_ref(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: Scalar,
    alpha_prev: Scalar,
    *,
    eta: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    prediction_type: str = "epsilon",
    clip_sample_range: Optional[float] = None,
    dynamic_threshold: Optional[float] = None,
    dynamic_threshold_max: Optional[float] = None,
    guidance_scale: Optional[Scalar] = None,
    guidance_rescale: float = 0.0,
    use_clipped_model_output: bool = False,
    return_x0: bool = False,
):
    """One DDIM update, written step by step after Song et al. 2021 (notation of the paper)."""
    dtype = sample.dtype
    x_t = sample.to(math_dtype(dtype))
    n = x_t.shape[0]
    # 1. model output; with guidance, combine the batched [uncond; cond] halves first
    if guidance_scale is not None:
        m = cfg_combine_ref(model_output.to(x_t.dtype), guidance_scale, guidance_rescale=guidance_rescale)
    else:
        m = model_output.to(x_t.dtype)
    # 2. ᾱ_t, ᾱ_prev, β_t = 1 − ᾱ_t (per sample)
    a_t = _per_sample_view("alpha_t", alpha_t, x_t)
    a_prev = _per_sample_view("alpha_prev", alpha_prev, x_t)
    b_t = 1 - a_t
    # 3. predicted x0 and ε (eq. 9; v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 for v_prediction)
    if prediction_type == "epsilon":
        x0 = (x_t - b_t.sqrt() * m) / a_t.sqrt()
        eps = m
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x_t - b_t.sqrt() * m
        eps = a_t.sqrt() * m + b_t.sqrt() * x_t
    elif prediction_type == "sample":
        x0 = m
        eps = (x_t - a_t.sqrt() * x0) / b_t.sqrt()
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    # 4. clip x0: fixed range, or Imagen's dynamic thresholding (s = clamp(quantile_p |x0|, min=1, max),
    #    which is `max` when max < 1 as in diffusers; clamp to ±s, divide by s). torch.quantile is NaN
    #    when |x0| holds a NaN: the sample is NaN. Samples without elements have nothing to threshold.
    if dynamic_threshold is not None and x0.numel() > 0:
        flat = x0.reshape(n, -1).abs()
        s = torch.quantile(flat, dynamic_threshold, dim=1)
        s = s.clamp(min=1.0, max=math.inf if dynamic_threshold_max is None else dynamic_threshold_max)
        s = s.view(-1, *([1] * (x0.dim() - 1)))
        x0 = torch.minimum(torch.maximum(x0, -s), s) / s
    elif clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    if use_clipped_model_output and (dynamic_threshold is not None or clip_sample_range is not None):
        eps = (x_t - a_t.sqrt() * x0) / b_t.sqrt()
    # 5. σ_t(η) (eq. 16)
    sigma = eta * ((1 - a_prev) / b_t).sqrt() * (1 - a_t / a_prev).sqrt() if eta > 0 else torch.zeros_like(a_t)
    # 6. x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev−σ²)·ε + σ·z (eq. 12)
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * noise.to(x_t.dtype)
    if return_x0:
        return x_prev.to(dtype), x0.to(dtype)
    return x_prev.to(dtype)


def ddim_invert_step_ref(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: Scalar,
    alpha_next: Scalar,
    *,
    prediction_type: str = "epsilon",
    clip_sample_range: Optional[float] = None,
    guidance_scale: Optional[Scalar] = None,
    guidance_rescale: float = 0.0,
    return_x0: bool = False,
):
    """DDIM inversion x_t → x_next: eq. 12 at η = 0 run towards noise (ᾱ_next ≤ ᾱ_t)."""
    return ddim_step_ref(
        sample, model_output, alpha_t, alpha_next, prediction_type=prediction_type,
        clip_sample_range=clip_sample_range, guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale, return_x0=return_x0,
    )


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _check_model_output(sample: torch.Tensor, model_output: torch.Tensor, guided: bool) -> None:
    if model_output.dtype is not sample.dtype or model_output.device != sample.device:
        _checks.same_device_dtype("model_output", model_output, "sample", sample)
    xs, ms = sample.shape, model_output.shape
    if guided:
        if ms[0] != 2 * xs[0] or ms[1:] != xs[1:]:
            raise ValueError(
                f"model_output must hold the batched [uncond; cond] outputs of shape "
                f"{(2 * xs[0], *xs[1:])} when guidance_scale is given, got {tuple(ms)}"
            )
    elif ms != xs:
        raise ValueError(f"model_output must have the shape of sample {tuple(xs)}, got {tuple(ms)}")


# (mode, clip range, dynamic-threshold quantile, dynamic-threshold bound): DdimStepArgs' clip fields
_NO_CLIP = (ClipMode.none, 0.0, 0.0, math.inf)


def _clip_params(clip_sample_range, dynamic_threshold, dynamic_threshold_max) -> tuple:
    if clip_sample_range is not None and dynamic_threshold is not None:
        raise ValueError("pass either clip_sample_range or dynamic_threshold, not both")
    if clip_sample_range is not None:
        clip_range = _checks.finite("clip_sample_range", clip_sample_range)
        if clip_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_range}")
        if dynamic_threshold_max is not None:
            raise ValueError("dynamic_threshold_max needs dynamic_threshold")
        return (ClipMode.fixed, clip_range, 0.0, math.inf)
    if dynamic_threshold is None:
        raise ValueError("dynamic_threshold_max needs dynamic_threshold")
    dyn_q = _checks.finite("dynamic_threshold", dynamic_threshold)
    if not 0.0 < dyn_q <= 1.0:
        raise ValueError(f"dynamic_threshold must lie in (0, 1], got {dyn_q}")
    dyn_max = math.inf
    if dynamic_threshold_max is not None:
        dyn_max = _checks.finite("dynamic_threshold_max", dynamic_threshold_max)
        if dyn_max <= 0.0:  # below 1 is fine: s = clamp(q, min=1, max) is then max (diffusers' semantics)
            raise ValueError(f"dynamic_threshold_max must be > 0, got {dyn_max}")
    return (ClipMode.dynamic, 0.0, dyn_q, dyn_max)


def _check_guidance(guidance_scale, guidance_rescale, n: int, defer: bool = False):
    """(w as n floats, or — ``defer`` and a tensor — the tensor, its values checked by the op; φ)."""
    rescale = _checks.finite("guidance_rescale", guidance_rescale)
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {rescale}")
    if guidance_scale is None:
        if rescale != 0.0:
            raise ValueError("guidance_rescale needs guidance_scale (and the batched [uncond; cond] model_output)")
        return None, rescale
    if defer and isinstance(guidance_scale, torch.Tensor):
        return _checks.per_sample_shape("guidance_scale", guidance_scale, n), rescale
    return _checks.per_sample("guidance_scale", guidance_scale, n), rescale


def _check_step_values(a_t: List[float], a_prev: List[float], eta: float, prediction_type: str, use_clipped: bool):
    """The checks of ddim_step that need ᾱ's values together with the other arguments."""
    if eta > 0:
        for at, ap in zip(a_t, a_prev):
            if at >= 1.0 or ap < at or ap == 0.0:
                raise ValueError(
                    f"eta > 0 needs 0 < alpha_prev, alpha_t < 1 and alpha_prev >= alpha_t (a step towards less noise), "
                    f"got alpha_t={at}, alpha_prev={ap}"
                )
            sigma2 = eta**2 * (1 - ap) / (1 - at) * (1 - at / ap)
            if 1 - ap - sigma2 < -1e-12:
                raise ValueError(f"eta={eta} is too large: 1 − alpha_prev − σ² < 0 at alpha_t={at}, alpha_prev={ap}")
    if (prediction_type == "sample" or use_clipped) and 1.0 in a_t:
        raise ValueError("alpha_t must be < 1 when ε̂ is derived from x̂0 (prediction_type='sample' or use_clipped_model_output)")


def check_alphas(alpha_t, alpha_prev, n: int, prediction_type: str):
    """ᾱ_t and ᾱ_prev as n floats each, in range (ᾱ = 0 is the last step of a zero-terminal-SNR schedule:
    fine for v and x0 prediction, but ε-prediction divides by √ᾱ_t)."""
    a_t = _checks.per_sample("alpha_t", alpha_t, n, lo=0.0, hi=1.0, lo_open=prediction_type == "epsilon")
    return a_t, _checks.per_sample("alpha_prev", alpha_prev, n, lo=0.0, hi=1.0)


def op_scalars(values, n: int) -> torch.Tensor:
    """Per-sample values as the ddim custom ops take them: a float64 tensor of n values (a list of floats,
    or a checked-shape tensor whose values the op checks)."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).reshape(-1).expand(n)
    return torch.tensor(values, dtype=torch.float64)


_DDIM_STEP = _launch.kernel("ddim_step")


def _ddim_compiled(sample, model_output, noise, alpha_t, alpha_prev, guidance, eta, rescale, prediction_type, clip,
                   use_clipped, return_x0):
    """The CPU or CUDA kernel, after the device of ``sample``."""
    x = sample.contiguous()
    m = model_output.contiguous()
    z = noise.contiguous() if noise is not None else None
    n = len(alpha_t)
    numel = x.numel() // n if n else 0  # an empty batch: the kernel writes nothing
    out = _alloc.empty_like(x)
    x0 = _alloc.empty_like(x) if return_x0 else None
    mode, clip_range, dyn_q, dyn_max = clip
    args = _C.DdimStepArgs()
    args.dtype = DTYPES[x.dtype]
    args.batch = n
    args.numel = numel
    args.sample = x.data_ptr()
    args.model = m.data_ptr()
    if guidance is not None:  # the batched [uncond; cond] output: cond is its second half
        args.model_cond = m.data_ptr() + n * numel * m.element_size()
        args.guidance_scale = guidance
    if z is not None:
        args.noise = z.data_ptr()
    args.out = out.data_ptr()
    if x0 is not None:
        args.out_x0 = x0.data_ptr()
    args.alpha_t = alpha_t
    args.alpha_prev = alpha_prev
    args.eta = eta
    args.guidance_rescale = rescale
    args.prediction = PREDICTIONS[prediction_type]
    args.clip = mode
    args.clip_range = clip_range
    args.dynamic_quantile = dyn_q
    args.dynamic_max = dyn_max
    args.use_clipped_model_output = use_clipped
    _launch.run(_DDIM_STEP, args, x)
    return (out, x0) if return_x0 else out


def _ddim_torch(sample, model_output, noise, alpha_t, alpha_prev, guidance, eta, rescale, prediction_type, clip,
                use_clipped, return_x0):
    mode, clip_range, dyn_q, dyn_max = clip
    return ddim_step_ref(
        sample, model_output,
        torch.tensor(alpha_t, dtype=torch.float64), torch.tensor(alpha_prev, dtype=torch.float64),
        eta=eta, noise=noise, prediction_type=prediction_type,
        clip_sample_range=clip_range if mode == ClipMode.fixed else None,
        dynamic_threshold=dyn_q if mode == ClipMode.dynamic else None,
        dynamic_threshold_max=dyn_max if mode == ClipMode.dynamic else None,
        guidance_scale=torch.tensor(guidance, dtype=torch.float64) if guidance is not None else None,
        guidance_rescale=rescale, use_clipped_model_output=use_clipped, return_x0=return_x0,
    )


_DDIM_IMPLS = {"cuda": _ddim_compiled, "cpu": _ddim_compiled, "torch": _ddim_torch}


_UNIFORM_CPU: dict = {}  # dtype -> whether ddim_step on CPU tensors of it runs the compiled kernel
_jit_tracing = torch._C._get_tracing_state


def _ddim_fast(sample, model_output, alpha_t: float, alpha_prev: float, guidance: Optional[float],
               prediction_type: str):
    """A sampling loop's call — float ᾱ and w, η = 0, no clipping, plain tensors of one dtype on one
    device, nothing to differentiate or trace — checked in a few comparisons and run on the kernel:
    half of a small step's time went to the general checks. On the CPU one call of
    ``_C.ddim_step_uniform`` passes the tensors and scalars (filling DdimStepArgs field by field cost
    about 1.5 µs of a 13 µs step). None sends the call the general way, which also gives every
    invalid call its error."""
    prediction = PREDICTIONS.get(prediction_type)
    if (prediction is None or not 0.0 <= alpha_prev <= 1.0
            or not (0.0 < alpha_t < 1.0 or (alpha_t == 0.0 and prediction_type != "epsilon"))
            or (guidance is not None and not -math.inf < guidance < math.inf)
            or not direct(sample, model_output) or model_output.dtype is not sample.dtype):
        return None
    xs, ms = sample.shape, model_output.shape
    if not xs or not xs[0] or ms[1:] != xs[1:] or ms[0] != (xs[0] if guidance is None else 2 * xs[0]) \
            or model_output.device != sample.device or _jit_tracing() is not None:
        return None
    n = xs[0]
    if sample.is_cpu:
        compiled = _UNIFORM_CPU.get(sample.dtype)
        if compiled is None:
            compiled = _UNIFORM_CPU[sample.dtype] = \
                dispatch("ddim_step", _DDIM_IMPLS, sample.device, sample.dtype, None) is _ddim_compiled
        if not compiled:
            return None
        x = sample.contiguous()
        m = model_output.contiguous()
        out = _alloc.empty_like(x)
        _C.ddim_step_uniform(x.data_ptr(), m.data_ptr(), out.data_ptr(), DTYPES[x.dtype], n, x.numel() // n,
                             alpha_t, alpha_prev, guidance, prediction, torch.get_num_threads())
        return out
    if dispatch("ddim_step", _DDIM_IMPLS, sample.device, sample.dtype, None) is not _ddim_compiled:
        return None
    return _ddim_compiled(sample, model_output, None, [alpha_t] * n, [alpha_prev] * n,
                          None if guidance is None else [guidance] * n, 0.0, 0.0, prediction_type, _NO_CLIP, False,
                          False)


def ddim_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: Scalar,
    alpha_prev: Scalar,
    *,
    eta: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    prediction_type: str = "epsilon",
    clip_sample_range: Optional[float] = None,
    dynamic_threshold: Optional[float] = None,
    dynamic_threshold_max: Optional[float] = None,
    guidance_scale: Optional[Scalar] = None,
    guidance_rescale: float = 0.0,
    use_clipped_model_output: bool = False,
    return_x0: bool = False,
    backend: Optional[str] = None,
):
    """One DDIM update x_t → x_prev (Song et al. 2021, eq. 12), in one pass over memory.

    Args:
        sample: x_t, shape (N, ...), float32 or bfloat16 (and float16 on CUDA; any float dtype on the
            torch backend).
        model_output: the model's prediction for ``sample`` (N, ...); with ``guidance_scale``, the
            batched ``[uncond; cond]`` outputs (2N, ...), combined in the same pass.
        alpha_t, alpha_prev: ᾱ at the current and the previous (less noisy) timestep, in [0, 1]
            (ᾱ_t = 0, the end of a zero-terminal-SNR schedule, needs v or x0 prediction); a real
            number (Python, numpy or a 0-d tensor) or a 1-D tensor of per-sample values.
        eta: η ≥ 0; σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev). η > 0 needs ``noise`` (N, ...).
        prediction_type: "epsilon", "v_prediction" or "sample".
        clip_sample_range: clamp x̂0 to [−r, r].
        dynamic_threshold: Imagen's dynamic thresholding: p in (0, 1]; s = clamp(quantile_p(|x̂0|),
            min=1, max=``dynamic_threshold_max``) per sample, x̂0 = clamp(x̂0, −s, s)/s. The quantile is
            torch.quantile's (linear); as in diffusers, a bound below 1 gives s = bound (any bound > 0).
        guidance_scale: classifier-free guidance weight w (number or per-sample 1-D tensor).
        guidance_rescale: φ in [0, 1] of Lin et al. 2023 (needs ``guidance_scale``).
        use_clipped_model_output: recompute ε̂ from the clipped x̂0 (as diffusers' flag of that name).
        return_x0: also return the (clipped) x̂0.
        backend: "cpu", "cuda" or "torch" to insist on one; None picks the fastest that can run.

    Returns:
        x_prev, or (x_prev, x̂0) with ``return_x0``. Empty inputs (batch 0, or no elements per
        sample) give empty outputs.

    Non-finite inputs: every backend gives the reference's answer element by element — the guided
    output is ε_u + w·(ε_c − ε_u) (so ε_u = inf gives NaN for w > 0), ε̂ = m for ε-prediction and
    x̂0 = m for x0-prediction (an infinite x_t does not reach them through 0·inf). A per-sample
    statistic that is NaN makes the whole sample NaN: the guidance-rescale std of a sample holding
    an inf or NaN, and the dynamic-threshold quantile of a sample whose |x̂0| holds a NaN (or whose
    interpolation meets infinities, as torch.quantile's does).

    Autograd: when grad mode is on and a tensor input requires grad (sample, model_output, noise,
    or tensors of ᾱ or w), the kernels compute the forward and the backward is the reference's
    (recomputed in float32, or float64 for float64 inputs): gradients of clipping and of the
    dynamic-threshold quantile are torch's subgradients. The other scalars have no gradient; a
    tensor of them that requires grad is an error.
    """
    if (type(alpha_t) is float and type(alpha_prev) is float
            and (guidance_scale is None or type(guidance_scale) is float)
            and noise is None and backend is None and (eta == 0 if type(eta) in (float, int) else False)
            and clip_sample_range is None and dynamic_threshold is None and dynamic_threshold_max is None
            and type(guidance_rescale) in (float, int) and guidance_rescale == 0
            and use_clipped_model_output is False and return_x0 is False):
        out = _ddim_fast(sample, model_output, alpha_t, alpha_prev, guidance_scale, prediction_type)
        if out is not None:
            return out
    _checks.tensor("sample", sample)
    _checks.tensor("model_output", model_output)
    if sample.dim() == 0:
        raise ValueError("sample must have a batch dimension (N, ...), got a 0-d tensor")
    n = sample.shape[0]
    # Traced (torch.compile, export) with tensors of ᾱ or w: their values are not on the host at trace
    # time; the custom op checks them when it runs (no graph break, and no recompilation per step).
    scalars = (alpha_t, alpha_prev, guidance_scale)
    defer = (tracing() and any(isinstance(v, torch.Tensor) for v in scalars)
             and not needs_grad(*scalars))
    if guidance_scale is None and guidance_rescale == 0.0:
        guidance, rescale = None, 0.0
    else:
        guidance, rescale = _check_guidance(guidance_scale, guidance_rescale, n, defer)
    _check_model_output(sample, model_output, guidance is not None)
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if defer:
        a_t = _checks.per_sample_shape("alpha_t", alpha_t, n)
        a_prev = _checks.per_sample_shape("alpha_prev", alpha_prev, n)
    else:
        a_t, a_prev = check_alphas(alpha_t, alpha_prev, n, prediction_type)
    eta = _checks.finite("eta", eta)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0:
        if noise is None:
            raise ValueError("noise is required when eta > 0 (pass z ~ N(0, I) shaped like sample)")
        _checks.tensor("noise", noise)
        _checks.same_device_dtype("noise", noise, "sample", sample)
        _checks.same_shape("noise", noise, "sample", sample)
    else:
        noise = None
    if not defer:
        _check_step_values(a_t, a_prev, eta, prediction_type, bool(use_clipped_model_output))
    if clip_sample_range is None and dynamic_threshold is None and dynamic_threshold_max is None:
        clip = _NO_CLIP
    else:
        clip = _clip_params(clip_sample_range, dynamic_threshold, dynamic_threshold_max)
    impl = dispatch("ddim_step", _DDIM_IMPLS, sample.device, sample.dtype, backend)
    args = (sample, model_output, noise, a_t, a_prev, guidance, eta, rescale, prediction_type,
            clip, bool(use_clipped_model_output), bool(return_x0))
    scalars = (alpha_t, alpha_prev, guidance_scale if guidance is not None else None)
    if not needs_grad(*scalars):  # the custom op differentiates sample, model_output and noise
        if not defer and direct(sample, model_output, noise):
            return impl(*args)
        mode, clip_range, dyn_q, dyn_max = clip
        op = torch.ops.diffrt.ddim_step_x0 if return_x0 else torch.ops.diffrt.ddim_step
        return op.default(sample, model_output, noise, op_scalars(a_t, n), op_scalars(a_prev, n),
                          None if guidance is None else op_scalars(guidance, n), eta, rescale, prediction_type,
                          mode.name, clip_range, dyn_q, dyn_max, bool(use_clipped_model_output), backend)
    grad_inputs = (sample, model_output, noise, *scalars)
    mode, clip_range, dyn_q, dyn_max = clip

    def reference(sample, model_output, noise, alpha_t, alpha_prev, guidance_scale):
        return ddim_step_ref(
            sample, model_output, alpha_t, alpha_prev, eta=eta, noise=noise, prediction_type=prediction_type,
            clip_sample_range=clip_range if mode == ClipMode.fixed else None,
            dynamic_threshold=dyn_q if mode == ClipMode.dynamic else None,
            dynamic_threshold_max=dyn_max if mode == ClipMode.dynamic else None,
            guidance_scale=guidance_scale, guidance_rescale=rescale,
            use_clipped_model_output=bool(use_clipped_model_output), return_x0=bool(return_x0),
        )

    return with_reference_gradients(lambda: impl(*args), reference, grad_inputs, impl is _ddim_torch)


def ddim_invert_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_t: Scalar,
    alpha_next: Scalar,
    *,
    prediction_type: str = "epsilon",
    clip_sample_range: Optional[float] = None,
    guidance_scale: Optional[Scalar] = None,
    guidance_rescale: float = 0.0,
    return_x0: bool = False,
    backend: Optional[str] = None,
):
    """One DDIM inversion step x_t → x_next (towards noise, ᾱ_next ≤ ᾱ_t): eq. 12 at η = 0,
    x_next = √ᾱ_next·x̂0 + √(1−ᾱ_next)·ε̂. Used to encode images for DiffEdit, Imagic and unCLIP
    variations. Same fusion of guidance and the same arguments as :func:`ddim_step`."""
    return ddim_step(
        sample, model_output, alpha_t, alpha_next, prediction_type=prediction_type,
        clip_sample_range=clip_sample_range, guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale, return_x0=return_x0, backend=backend,
    )


_CFG_COMBINE = _launch.kernel("cfg_combine")


def _cfg_compiled(model_output, guidance, rescale):
    """The CPU or CUDA kernel, after the device of ``model_output``."""
    m = model_output.contiguous()
    n = len(guidance)
    numel = m.numel() // (2 * n) if n else 0
    out = _alloc.empty_like(m[:n])
    args = _C.CfgCombineArgs()
    args.dtype = DTYPES[m.dtype]
    args.batch = n
    args.numel = numel
    args.uncond = m.data_ptr()
    args.cond = m.data_ptr() + n * numel * m.element_size()
    args.out = out.data_ptr()
    args.guidance_scale = guidance
    args.guidance_rescale = rescale
    _launch.run(_CFG_COMBINE, args, m)
    return out


def _cfg_torch(model_output, guidance, rescale):
    return cfg_combine_ref(model_output, torch.tensor(guidance, dtype=torch.float64), guidance_rescale=rescale)


_CFG_IMPLS = {"cuda": _cfg_compiled, "cpu": _cfg_compiled, "torch": _cfg_torch}


def cfg_combine(
    model_output: torch.Tensor,
    guidance_scale: Scalar,
    *,
    guidance_rescale: float = 0.0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """ε̃ = ε_u + w·(ε_c − ε_u) from the batched ``[uncond; cond]`` model output (2N, ...) → (N, ...),
    with optional guidance rescale φ (Lin et al. 2023). ``guidance_scale`` is a real number or a 1-D
    tensor of N per-sample weights. The rescale std is computed stably (per-chunk two-pass, merged
    in a fixed order: accurate at any |mean|/std, the same bits for any thread count). Non-finite
    inputs, empty inputs and autograd behave as in :func:`ddim_step`. Under torch.compile / export a
    tensor of w is a graph input whose values the custom op checks when it runs (no graph break)."""
    _checks.tensor("model_output", model_output)
    if model_output.dim() < 1 or model_output.shape[0] % 2:
        raise ValueError(
            f"model_output must hold the batched [uncond; cond] outputs (an even batch), "
            f"got shape {tuple(model_output.shape)}"
        )
    n = model_output.shape[0] // 2
    # Traced with a tensor of w: its values are not on the host at trace time; the custom op checks them
    # when it runs (no graph break, and one graph for every value of w).
    defer = tracing() and isinstance(guidance_scale, torch.Tensor) and not needs_grad(guidance_scale)
    guidance, rescale = _check_guidance(guidance_scale, guidance_rescale, n, defer)
    impl = dispatch("cfg_combine", _CFG_IMPLS, model_output.device, model_output.dtype, backend)
    if not needs_grad(guidance_scale):  # the custom op differentiates model_output
        if not defer and direct(model_output):
            return impl(model_output, guidance, rescale)
        return torch.ops.diffrt.cfg_combine.default(model_output, op_scalars(guidance, n), rescale, backend)
    return with_reference_gradients(
        lambda: impl(model_output, guidance, rescale),
        lambda model_output, guidance_scale: cfg_combine_ref(model_output, guidance_scale, guidance_rescale=rescale),
        (model_output, guidance_scale), impl is _cfg_torch,
    )


# ---------------------------------------------------------------------------------------------
# σ-space steps: Euler, Euler ancestral, DPM-Solver++(2M)
# ---------------------------------------------------------------------------------------------
# σ = √((1−ᾱ)/ᾱ) (Karras et al. 2022). Euler works on the variance-exploding sample x = x0 + σ·ε (the
# model sees x/√(σ²+1)); DPM-Solver on the variance-preserving x = α·x0 + σ_vp·ε with α = 1/√(σ²+1),
# σ_vp = σ·α (the model sees x). Memory: read x, m (+ z or x̂0_last); write x_prev (+ x̂0). One pass.


def _sigma_x0(x_t: torch.Tensor, m: torch.Tensor, sigma: torch.Tensor, prediction_type: str,
              variance_preserving: bool) -> torch.Tensor:
    """x̂0 from the model output: the prediction type's conversion on an Euler or a DPM-Solver sample."""
    alpha = 1 / (sigma**2 + 1).sqrt()
    if prediction_type == "sample":
        return m
    if prediction_type == "epsilon":
        return (x_t - sigma * alpha * m) / alpha if variance_preserving else x_t - sigma * m
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * alpha * m if variance_preserving else m * (-sigma * alpha) + x_t / (sigma**2 + 1)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def euler_step_ref(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    *,
    noise: Optional[torch.Tensor] = None,
    prediction_type: str = "epsilon",
    return_x0: bool = False,
):
    """One Euler step from σ to σ_next (Karras et al. 2022, Algorithm 1 at γ = 0), or with ``noise`` the
    ancestral step (k-diffusion's sample_euler_ancestral):
        x̂0 = x − σ·ε (epsilon) | x/(σ²+1) − v·σ/√(σ²+1) (v_prediction) | m (sample)
        d = (x − x̂0)/σ
        Euler:      x_prev = x + d·(σ_next − σ)
        ancestral:  σ_up = √(σ_next²(σ² − σ_next²)/σ²), σ_down = √(σ_next² − σ_up²),
                    x_prev = x + d·(σ_down − σ) + σ_up·z"""
    dtype = sample.dtype
    x_t = sample.to(math_dtype(dtype))
    m = model_output.to(x_t.dtype)
    s = _per_sample_view("sigma", sigma, x_t)
    s_next = _per_sample_view("sigma_next", sigma_next, x_t)
    x0 = _sigma_x0(x_t, m, s, prediction_type, variance_preserving=False)
    d = (x_t - x0) / s
    if noise is None:
        x_prev = x_t + d * (s_next - s)
    else:
        s_up = (s_next**2 * (s**2 - s_next**2) / s**2).clamp_min(0).sqrt()
        s_down = (s_next**2 - s_up**2).clamp_min(0).sqrt()
        x_prev = x_t + d * (s_down - s) + s_up * noise.to(x_t.dtype)
    return (x_prev.to(dtype), x0.to(dtype)) if return_x0 else x_prev.to(dtype)


def dpm_solver_2m_step_ref(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    *,
    x0_last: Optional[torch.Tensor] = None,
    sigma_last: Optional[Scalar] = None,
    prediction_type: str = "epsilon",
    solver_type: str = "midpoint",
    return_x0: bool = False,
):
    """One DPM-Solver++(2M) step from σ to σ_next (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data
    prediction, λ = log α − log σ_vp:
        h = λ_next − λ,  D0 = x̂0
        first order (no ``x0_last``):  x_next = (σ_vp,next/σ_vp)·x − α_next·(e^−h − 1)·D0
        second order: r = (λ − λ_last)/h, D1 = (x̂0 − x̂0_last)/r, then
            midpoint: − ½·α_next·(e^−h − 1)·D1        heun: + α_next·((e^−h − 1)/h + 1)·D1
    σ_next = 0 is the limit h → ∞: x_next = x̂0."""
    dtype = sample.dtype
    x_t = sample.to(math_dtype(dtype))
    m = model_output.to(x_t.dtype)
    s = _per_sample_view("sigma", sigma, x_t)
    s_next = _per_sample_view("sigma_next", sigma_next, x_t)
    x0 = _sigma_x0(x_t, m, s, prediction_type, variance_preserving=True)

    def alpha_sigma_lambda(v):
        alpha = 1 / (v**2 + 1).sqrt()
        return alpha, v * alpha, alpha.log() - (v * alpha).log()

    a_s, sv_s, lam_s = alpha_sigma_lambda(s)
    a_t, sv_t, lam_t = alpha_sigma_lambda(s_next)
    h = lam_t - lam_s
    phi = torch.expm1(-h)
    x_prev = (sv_t / sv_s) * x_t - (a_t * phi) * x0
    if x0_last is not None:
        _, _, lam_last = alpha_sigma_lambda(_per_sample_view("sigma_last", sigma_last, x_t))
        d1 = (x0 - x0_last.to(x_t.dtype)) / ((lam_s - lam_last) / h)
        if solver_type == "midpoint":
            x_prev = x_prev - 0.5 * (a_t * phi) * d1
        elif solver_type == "heun":
            x_prev = x_prev + (a_t * (phi / h + 1.0)) * d1
        else:
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    x_prev = torch.where(s_next == 0, x0, x_prev)  # h = ∞
    return (x_prev.to(dtype), x0.to(dtype)) if return_x0 else x_prev.to(dtype)


def _check_like(name: str, t: torch.Tensor, sample: torch.Tensor) -> None:
    _checks.tensor(name, t)
    _checks.same_device_dtype(name, t, "sample", sample)
    _checks.same_shape(name, t, "sample", sample)


def check_euler_sigmas(sigma, sigma_next, n: int, ancestral: bool):
    """σ > 0 and σ_next ≥ 0 as n floats each; the ancestral step (noise) goes towards less noise."""
    s = _checks.per_sample("sigma", sigma, n, lo=0.0, lo_open=True)
    s_next = _checks.per_sample("sigma_next", sigma_next, n, lo=0.0)
    if ancestral:
        for a, b in zip(s, s_next):
            if b > a:
                raise ValueError(f"the ancestral step (noise given) needs sigma_next <= sigma, got {b} > {a}")
    return s, s_next


def check_dpm_sigmas(sigma, sigma_next, sigma_last, n: int):
    """σ > 0, 0 ≤ σ_next ≤ σ and (second order, when given) σ_last > σ as n floats each (σ_last: None)."""
    s = _checks.per_sample("sigma", sigma, n, lo=0.0, lo_open=True)
    s_next = _checks.per_sample("sigma_next", sigma_next, n, lo=0.0)
    s_last = None
    if sigma_last is not None:
        s_last = _checks.per_sample("sigma_last", sigma_last, n, lo=0.0, lo_open=True)
        for a, b in zip(s, s_last):
            if not b > a:
                raise ValueError(f"sigma_last must be > sigma (the previous step was noisier), got {b} <= {a}")
    for a, b in zip(s, s_next):
        if b > a:  # σ_next = σ (a final σ equal to σ_min) is a step of h = 0: x_next = x
            raise ValueError(f"sigma_next must be <= sigma (a step towards less noise), got {b} > {a}")
    return s, s_next, s_last


def _sigma_step_args(args, sample, model_output, sigma, sigma_next, prediction_type, return_x0):
    """Fill what the σ-space step kernels (Euler, DPM-Solver++ 2M) share; returns (args, x, out, x0)."""
    x, m = sample.contiguous(), model_output.contiguous()
    n = len(sigma)
    out = _alloc.empty_like(x)
    x0 = _alloc.empty_like(x) if return_x0 else None
    args.dtype = DTYPES[x.dtype]
    args.batch = n
    args.numel = x.numel() // n if n else 0
    args.sample = x.data_ptr()
    args.model = m.data_ptr()
    args.out = out.data_ptr()
    if x0 is not None:
        args.out_x0 = x0.data_ptr()
    args.sigma = sigma
    args.sigma_next = sigma_next
    args.prediction = PREDICTIONS[prediction_type]
    return args, x, out, x0


_EULER_STEP = _launch.kernel("euler_step")


def _euler_compiled(sample, model_output, noise, sigma, sigma_next, prediction_type, return_x0):
    args, x, out, x0 = _sigma_step_args(_C.EulerStepArgs(), sample, model_output, sigma, sigma_next,
                                        prediction_type, return_x0)
    z = noise.contiguous() if noise is not None else None
    if z is not None:
        args.noise = z.data_ptr()
    _launch.run(_EULER_STEP, args, x)
    return (out, x0) if return_x0 else out


def _euler_torch(sample, model_output, noise, sigma, sigma_next, prediction_type, return_x0):
    return euler_step_ref(sample, model_output, torch.tensor(sigma, dtype=torch.float64),
                          torch.tensor(sigma_next, dtype=torch.float64), noise=noise,
                          prediction_type=prediction_type, return_x0=return_x0)


_EULER_IMPLS = {"cuda": _euler_compiled, "cpu": _euler_compiled, "torch": _euler_torch}


def euler_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    *,
    noise: Optional[torch.Tensor] = None,
    prediction_type: str = "epsilon",
    return_x0: bool = False,
    backend: Optional[str] = None,
):
    """One Euler step x(σ) → x(σ_next) in one pass over memory, or with ``noise`` the ancestral step
    (x + d·(σ_down − σ) + σ_up·z): the update of diffusers' EulerDiscreteScheduler (s_churn = 0) and
    EulerAncestralDiscreteScheduler. The formulas are :func:`euler_step_ref`'s.

    Args:
        sample: x at σ, the variance-exploding sample x = x0 + σ·ε (diffusers' Euler latents), (N, ...).
        model_output: the model's output for x/√(σ²+1), shaped like ``sample``.
        sigma, sigma_next: σ > 0 and σ_next ≥ 0 (≤ σ with ``noise``); numbers or 1-D per-sample tensors
            (under torch.compile, tensors are graph inputs: one graph for every step, values checked when
            the op runs).
        noise: z ~ N(0, I) shaped like ``sample``: the ancestral step.
        prediction_type: "epsilon", "v_prediction" or "sample".
        return_x0: also return x̂0.
        backend: "cpu", "cuda" or "torch"; None picks the fastest that can run.
    """
    _checks.tensor("sample", sample)
    _checks.tensor("model_output", model_output)
    if sample.dim() == 0:
        raise ValueError("sample must have a batch dimension (N, ...), got a 0-d tensor")
    _check_model_output(sample, model_output, guided=False)
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    n = sample.shape[0]
    if noise is not None:
        _check_like("noise", noise, sample)
    # Traced with tensors of σ: their values are checked by the custom op when it runs (see ddim_step).
    tensor_sigmas = isinstance(sigma, torch.Tensor) or isinstance(sigma_next, torch.Tensor)
    grad_sigmas = tensor_sigmas and needs_grad(sigma, sigma_next)
    defer = tensor_sigmas and not grad_sigmas and tracing()
    if defer:
        s = _checks.per_sample_shape("sigma", sigma, n)
        s_next = _checks.per_sample_shape("sigma_next", sigma_next, n)
    else:
        s, s_next = check_euler_sigmas(sigma, sigma_next, n, noise is not None)
    impl = dispatch("euler_step", _EULER_IMPLS, sample.device, sample.dtype, backend)
    if not grad_sigmas:  # the custom op differentiates sample, model_output and noise
        if not defer and direct(sample, model_output, noise):
            return impl(sample, model_output, noise, s, s_next, prediction_type, bool(return_x0))
        op = torch.ops.diffrt.euler_step_x0 if return_x0 else torch.ops.diffrt.euler_step
        return op.default(sample, model_output, noise, op_scalars(s, n), op_scalars(s_next, n), prediction_type,
                          backend)
    args = (sample, model_output, noise, s, s_next, prediction_type, bool(return_x0))
    return with_reference_gradients(
        lambda: impl(*args),
        lambda sample, model_output, noise, sigma, sigma_next: euler_step_ref(
            sample, model_output, sigma, sigma_next, noise=noise, prediction_type=prediction_type,
            return_x0=bool(return_x0)),
        (sample, model_output, noise, sigma, sigma_next), impl is _euler_torch)


_DPM_STEP = _launch.kernel("dpm_solver_2m_step")
SOLVER_TYPES = ("midpoint", "heun")


def _dpm_compiled(sample, model_output, x0_last, sigma, sigma_next, sigma_last, prediction_type, solver_type,
                  return_x0):
    args, x, out, x0 = _sigma_step_args(_C.DpmSolver2mStepArgs(), sample, model_output, sigma, sigma_next,
                                        prediction_type, return_x0)
    last = x0_last.contiguous() if x0_last is not None else None
    if last is not None:
        args.x0_last = last.data_ptr()
        args.sigma_last = sigma_last
    args.heun = solver_type == "heun"
    _launch.run(_DPM_STEP, args, x)
    return (out, x0) if return_x0 else out


def _dpm_torch(sample, model_output, x0_last, sigma, sigma_next, sigma_last, prediction_type, solver_type,
               return_x0):
    f64 = torch.float64
    return dpm_solver_2m_step_ref(
        sample, model_output, torch.tensor(sigma, dtype=f64), torch.tensor(sigma_next, dtype=f64), x0_last=x0_last,
        sigma_last=torch.tensor(sigma_last, dtype=f64) if sigma_last is not None else None,
        prediction_type=prediction_type, solver_type=solver_type, return_x0=return_x0)


_DPM_IMPLS = {"cuda": _dpm_compiled, "cpu": _dpm_compiled, "torch": _dpm_torch}


def dpm_solver_2m_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    *,
    x0_last: Optional[torch.Tensor] = None,
    sigma_last: Optional[Scalar] = None,
    prediction_type: str = "epsilon",
    solver_type: str = "midpoint",
    return_x0: bool = False,
    backend: Optional[str] = None,
):
    """One DPM-Solver++(2M) step x(σ) → x(σ_next) in one pass over memory: the model output converted to
    x̂0 and the multistep update of diffusers' DPMSolverMultistepScheduler (algorithm_type "dpmsolver++",
    solver_order 2). First order without ``x0_last``; second order with the previous step's x̂0 and σ.
    The formulas are :func:`dpm_solver_2m_step_ref`'s.

    Args:
        sample: x at σ, variance preserving (diffusers' DPM-Solver latents), (N, ...).
        model_output: the model's output for ``sample``.
        sigma, sigma_next: σ > 0 and 0 ≤ σ_next ≤ σ (0: the step returns x̂0); numbers or per-sample tensors
            (graph inputs under torch.compile, as for :func:`euler_step`).
        x0_last, sigma_last: the previous step's x̂0 and its σ (> σ), for the second-order update.
        prediction_type: "epsilon", "v_prediction" or "sample".
        solver_type: "midpoint" (diffusers' default) or "heun".
        return_x0: also return x̂0 (the next step's ``x0_last``).
    """
    _checks.tensor("sample", sample)
    _checks.tensor("model_output", model_output)
    if sample.dim() == 0:
        raise ValueError("sample must have a batch dimension (N, ...), got a 0-d tensor")
    _check_model_output(sample, model_output, guided=False)
    if prediction_type not in PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    n = sample.shape[0]
    if (x0_last is None) != (sigma_last is None):
        raise ValueError("x0_last and sigma_last go together (the second-order update needs both)")
    if x0_last is not None:
        _check_like("x0_last", x0_last, sample)
    # Traced with tensors of σ: their values are checked by the custom op when it runs (see ddim_step).
    tensor_sigmas = (isinstance(sigma, torch.Tensor) or isinstance(sigma_next, torch.Tensor)
                     or isinstance(sigma_last, torch.Tensor))
    grad_sigmas = tensor_sigmas and needs_grad(sigma, sigma_next, sigma_last)
    defer = tensor_sigmas and not grad_sigmas and tracing()
    if defer:
        s = _checks.per_sample_shape("sigma", sigma, n)
        s_next = _checks.per_sample_shape("sigma_next", sigma_next, n)
        s_last = None if sigma_last is None else _checks.per_sample_shape("sigma_last", sigma_last, n)
    else:
        s, s_next, s_last = check_dpm_sigmas(sigma, sigma_next, sigma_last, n)
    impl = dispatch("dpm_solver_2m_step", _DPM_IMPLS, sample.device, sample.dtype, backend)
    if not grad_sigmas:  # the custom op differentiates sample, model_output and x0_last
        if not defer and direct(sample, model_output, x0_last):
            return impl(sample, model_output, x0_last, s, s_next, s_last, prediction_type, solver_type,
                        bool(return_x0))
        op = torch.ops.diffrt.dpm_solver_2m_step_x0 if return_x0 else torch.ops.diffrt.dpm_solver_2m_step
        return op.default(sample, model_output, x0_last, op_scalars(s, n), op_scalars(s_next, n),
                          None if s_last is None else op_scalars(s_last, n), prediction_type, solver_type, backend)
    args = (sample, model_output, x0_last, s, s_next, s_last, prediction_type, solver_type, bool(return_x0))
    return with_reference_gradients(
        lambda: impl(*args),
        lambda sample, model_output, x0_last, sigma, sigma_next, sigma_last: dpm_solver_2m_step_ref(
            sample, model_output, sigma, sigma_next, x0_last=x0_last, sigma_last=sigma_last,
            prediction_type=prediction_type, solver_type=solver_type, return_x0=bool(return_x0)),
        (sample, model_output, x0_last, sigma, sigma_next, sigma_last), impl is _dpm_torch)
