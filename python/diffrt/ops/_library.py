"""Every diffrt op as a ``torch.library`` custom op (namespace ``diffrt``), so that torch.compile and
torch.export see each one as a single opaque node (``torch.ops.diffrt.<name>``) instead of breaking
the graph at its kernel call.

One :class:`OpSpec` per op in ``SPECS``: the schema, the real implementation (validated arguments in,
backend dispatch inside: C++/CUDA kernels, Triton or the torch reference), the fake implementation
(output shapes, dtypes and strides without computing anything) and, for differentiable ops, the
autograd formula. The public entry points (``diffrt.ops.ddim_step`` …) validate their arguments and
then either run the chosen kernel directly — plain tensors, no tracing, no autograd: the dispatcher
round trip would cost more than a small kernel (see :func:`direct`) — or call ``torch.ops.diffrt.*``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

# The op modules themselves (``diffrt.ops.attention`` is also the name of the function the package exports).
_attention, _downsample, _masks, _norm, _sampling = (
    importlib.import_module(f"{__package__}.{name}")
    for name in ("attention", "downsample", "masks", "norm", "sampling"))
from . import _checks
from ._backend import dispatch
from ._codes import ClipMode

NAMESPACE = "diffrt"


@dataclass(frozen=True)
class OpSpec:
    """One custom op: ``torch.ops.diffrt.<name>(*args)`` with ``schema`` runs ``run(*args)``; ``fake(*args)``
    gives its outputs' metadata; ``backward(ctx, *grads)`` (after ``setup_context(ctx, inputs, output)``)
    its input gradients, when it has any."""

    name: str
    schema: str
    run: Callable
    fake: Callable
    backward: Optional[Callable] = None
    setup_context: Optional[Callable] = None


def _fresh(out: torch.Tensor, *inputs, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A custom op's output may be neither an input nor a view: the references return an input itself
    where the math is the identity (e.g. x̂0 = model_output for x0-prediction in float64). Its layout is
    the one the fake implementation gives (every backend the same)."""
    if out._base is not None or any(out is t for t in inputs):
        return out.clone(memory_format=memory_format)
    return out.contiguous(memory_format=memory_format)


def _vjp(reference: Callable, primals: Sequence[Optional[torch.Tensor]], grads, wanted: Sequence[bool]):
    """The vector-Jacobian product of ``reference`` over the primals that are tensors; None for the others
    and for those whose gradient is not wanted."""
    index = [i for i, (p, w) in enumerate(zip(primals, wanted)) if p is not None and w]
    if not index:
        return [None] * len(primals)

    def of_wanted(*ts):
        args = list(primals)
        for i, t in zip(index, ts):
            args[i] = t
        return reference(*args)

    outputs, vjp_fn = torch.func.vjp(of_wanted, *(primals[i].detach() for i in index))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grads = tuple(torch.zeros_like(o) if g is None else g.to(o.dtype) for o, g in zip(outputs, grads))
    found = vjp_fn(grads if len(grads) > 1 else grads[0])
    result = [None] * len(primals)
    for i, g in zip(index, found):
        result[i] = g
    return result


# ---------------------------------------------------------------------------------------------
# ddim_step (also ddim_invert_step and the guided step: one kernel), with and without x̂0
# ---------------------------------------------------------------------------------------------

# ᾱ_t, ᾱ_prev and w are float64 tensors of N values: a compiled sampler step takes them as graph inputs
# (one graph for every step), and the op checks their values when it runs.
_DDIM_SCHEMA_ARGS = (
    "(Tensor sample, Tensor model_output, Tensor? noise, Tensor alpha_t, Tensor alpha_prev, Tensor? guidance, "
    "float eta, float guidance_rescale, str prediction_type, str clip, float clip_range, float dynamic_quantile, "
    "float dynamic_max, bool use_clipped_model_output, str? backend)"
)


def _ddim_run(return_x0):
    def run(sample, model_output, noise, alpha_t, alpha_prev, guidance, eta, rescale, prediction_type, clip,
            clip_range, dyn_q, dyn_max, use_clipped, backend):
        impl = dispatch("ddim_step", _sampling._DDIM_IMPLS, sample.device, sample.dtype, backend)
        n = sample.shape[0]
        a_t, a_prev = _sampling.check_alphas(alpha_t, alpha_prev, n, prediction_type)
        w = None if guidance is None else _checks.per_sample("guidance_scale", guidance, n)
        _sampling._check_step_values(a_t, a_prev, eta, prediction_type, use_clipped)
        out = impl(sample, model_output, noise, a_t, a_prev, w, eta, rescale, prediction_type,
                   (ClipMode.__members__[clip], clip_range, dyn_q, dyn_max), use_clipped, return_x0)
        if return_x0:
            return tuple(_fresh(o, sample, model_output, noise) for o in out)
        return _fresh(out, sample, model_output, noise)

    return run


def _ddim_fake(return_x0):
    def fake(sample, *rest):
        out = sample.new_empty(sample.shape)
        return (out, sample.new_empty(sample.shape)) if return_x0 else out

    return fake


def _ddim_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])  # sample, model_output, noise, ᾱ_t, ᾱ_prev, w
    ctx.params = inputs[6:]


def _ddim_backward(return_x0):
    def backward(ctx, *grads):
        sample, model_output, noise, alpha_t, alpha_prev, guidance = ctx.saved_tensors
        eta, rescale, prediction_type, clip, clip_range, dyn_q, dyn_max, use_clipped, _backend = ctx.params
        checked = _sampling.Checked  # values the forward has checked: the reference takes them as they are

        def reference(sample, model_output, noise):
            return _sampling.ddim_step_ref(
                sample, model_output, checked(alpha_t), checked(alpha_prev), eta=eta, noise=noise,
                prediction_type=prediction_type,
                clip_sample_range=clip_range if clip == "fixed" else None,
                dynamic_threshold=dyn_q if clip == "dynamic" else None,
                dynamic_threshold_max=dyn_max if clip == "dynamic" else None,
                guidance_scale=None if guidance is None else checked(guidance), guidance_rescale=rescale,
                use_clipped_model_output=use_clipped, return_x0=return_x0,
            )

        grad_inputs = _vjp(reference, (sample, model_output, noise), grads, ctx.needs_input_grad[:3])
        return (*grad_inputs, *([None] * 12))

    return backward


# ---------------------------------------------------------------------------------------------
# cfg_combine
# ---------------------------------------------------------------------------------------------


def _cfg_run(model_output, guidance, rescale, backend):
    impl = dispatch("cfg_combine", _sampling._CFG_IMPLS, model_output.device, model_output.dtype, backend)
    w = _checks.per_sample("guidance_scale", guidance, model_output.shape[0] // 2)
    return _fresh(impl(model_output, w, rescale), model_output)


def _cfg_fake(model_output, guidance, rescale, backend):
    return model_output.new_empty((model_output.shape[0] // 2, *model_output.shape[1:]))


def _cfg_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.rescale = inputs[2]


def _cfg_backward(ctx, grad):
    model_output, guidance = ctx.saved_tensors
    rescale = ctx.rescale
    checked = _sampling.Checked(guidance)  # values the forward has checked
    (grad_m,) = _vjp(lambda m: _sampling.cfg_combine_ref(m, checked, guidance_rescale=rescale),
                     (model_output,), (grad,), ctx.needs_input_grad[:1])
    return grad_m, None, None, None


# ---------------------------------------------------------------------------------------------
# mask_blend and diffedit_mask
# ---------------------------------------------------------------------------------------------


def _blend_run(mask, a, b, backend, check_range=False):
    impl = dispatch("mask_blend", _masks._BLEND_IMPLS, a.device, a.dtype, backend)
    if check_range:  # the entry point defers the check here when traced: the mask's values exist only now
        _masks.check_mask_range(mask)
    return _fresh(impl(mask, a, b), mask, a, b)


def _blend_fake(mask, a, b, backend, check_range=False):
    return a.new_empty(a.shape)


def _blend_setup(ctx, inputs, output):
    mask, a, b = inputs[:3]
    ctx.save_for_backward(mask, a, b)


def _blend_backward(ctx, grad):
    mask, a, b = ctx.saved_tensors
    grad_mask, grad_a, grad_b = _masks.mask_blend_grads(mask, a, b, grad, ctx.needs_input_grad[:3])
    return grad_mask, grad_a, grad_b, None, None


def _diffedit_run(eps_query, eps_ref, clamp_ratio, threshold, backend):
    impl = dispatch("diffedit_mask", _masks._DIFFEDIT_IMPLS, eps_query.device, eps_query.dtype, backend)
    return _fresh(impl(eps_query, eps_ref, clamp_ratio, threshold), eps_query, eps_ref)


def _diffedit_fake(eps_query, eps_ref, clamp_ratio, threshold, backend):
    batch = eps_query.shape[0] if eps_query.dim() == 5 else 1
    dtype = torch.float64 if eps_query.dtype == torch.float64 else torch.float32
    return eps_query.new_empty((batch, 1, *eps_query.shape[-2:]), dtype=dtype)


def _diffedit_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.params = inputs[2:4]


def _diffedit_backward(ctx, grad):
    q, r = ctx.saved_tensors
    clamp_ratio, threshold = ctx.params
    if threshold is not None:  # a step function: zero almost everywhere (the entry point passes detached inputs)
        grad_q, grad_r = (torch.zeros_like(t) if w else None for t, w in zip((q, r), ctx.needs_input_grad[:2]))
        return grad_q, grad_r, None, None, None
    grad_q, grad_r = _vjp(lambda q, r: _masks.diffedit_mask_ref(q, r, clamp_ratio=clamp_ratio, threshold=None),
                          (q, r), (grad,), ctx.needs_input_grad[:2])
    return grad_q, grad_r, None, None, None


# ---------------------------------------------------------------------------------------------
# attention: forward alone (inference), forward with lse (saved for the fused backward), backward
# ---------------------------------------------------------------------------------------------


def _attention_run(q, k, v, key_padding_mask, scale, backend):
    inputs = (q, k, v, key_padding_mask, scale)
    return _fresh(dispatch("attention", _attention._IMPLS, q.device, q.dtype, backend, inputs)(*inputs), q, k, v)


def _attention_fake(q, k, v, key_padding_mask, scale, backend):
    return q.new_empty(q.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, key_padding_mask, scale, backend = inputs
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.params = (scale, backend)


def _attention_backward(ctx, dout):
    """The inference op's gradient (the entry point uses attention_forward when it records autograd): the
    forward is run again for the lse the fused backward needs."""
    q, k, v, key_padding_mask = ctx.saved_tensors
    scale, backend = ctx.params
    out, lse = torch.ops.diffrt.attention_forward.default(q, k, v, key_padding_mask, scale, backend)
    dq, dk, dv = torch.ops.diffrt.attention_backward.default(q, k, v, out, dout, lse, key_padding_mask, scale, backend)
    return dq, dk, dv, None, None, None


def _attention_lse_run(q, k, v, key_padding_mask, scale, backend):
    inputs = (q, k, v, key_padding_mask, scale)
    impl = dispatch("attention", _attention._IMPLS, q.device, q.dtype, backend, inputs)
    if impl is _attention._attention_torch:
        return _attention.attention_ref_with_lse(q, k, v, key_padding_mask, scale)
    return _attention._forward(q, k, v, key_padding_mask, scale, need_lse=True)


def _attention_lse_fake(q, k, v, key_padding_mask, scale, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _attention_lse_setup(ctx, inputs, output):
    q, k, v, key_padding_mask, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
    ctx.params = (scale, backend)


def _attention_lse_backward(ctx, dout, _dlse):
    q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
    scale, backend = ctx.params
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.diffrt.attention_backward.default(q, k, v, out, dout, lse, key_padding_mask, scale, backend)
    return dq, dk, dv, None, None, None


def _attention_backward_run(q, k, v, out, dout, lse, key_padding_mask, scale, backend):
    inputs = (q, k, v, key_padding_mask, scale)
    impl = dispatch("attention", _attention._IMPLS, q.device, q.dtype, backend, inputs)
    if impl is _attention._attention_torch:
        return _attention.attention_ref_backward(q, k, v, dout, key_padding_mask, scale)
    return _attention.fused_backward(q, k, v, out, dout, lse, key_padding_mask, scale)


def _attention_backward_fake(q, k, v, out, dout, lse, key_padding_mask, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# ---------------------------------------------------------------------------------------------
# downsample_cond (functional: the entry point writes the result into `out` itself)
# ---------------------------------------------------------------------------------------------


def _downsample_run(image, mask, weight, bias, stride, padding, backend):
    impl = dispatch("downsample_cond", _downsample._IMPLS, image.device, image.dtype, backend)
    return _fresh(impl(image, mask, weight, bias, stride, padding, None, 0), image, mask, weight, bias)


def _downsample_fake(image, mask, weight, bias, stride, padding, backend):
    n, c, k = image.shape[0], weight.shape[0], weight.shape[2]
    size = [_downsample._out_size(s, k, stride, padding) for s in image.shape[2:]]
    return image.new_empty((n, c, *size))


def _downsample_setup(ctx, inputs, output):
    image, mask, weight, bias, stride, padding, _ = inputs
    ctx.save_for_backward(image, mask, weight)
    ctx.conv = (stride, padding, bias is not None)


def _downsample_backward(ctx, grad):
    image, mask, weight = ctx.saved_tensors
    stride, padding, has_bias = ctx.conv
    grads = _downsample.conv_grads(image, mask, weight, grad, stride, padding, has_bias, ctx.needs_input_grad[:4])
    return (*grads, None, None, None)


# ---------------------------------------------------------------------------------------------
# euler_step and dpm_solver_2m_step, with and without x̂0
# ---------------------------------------------------------------------------------------------

# σ, σ_next (and σ_last) are float64 tensors of N values, as ᾱ for ddim_step: one compiled graph serves
# every step, and the op checks their values when it runs.
def _check_prediction_type(prediction_type):
    if prediction_type not in _sampling.PREDICTIONS:
        raise ValueError(f"prediction_type must be one of {_sampling.PREDICTION_TYPES}, got {prediction_type!r}")


_EULER_SCHEMA_ARGS = "(Tensor sample, Tensor model_output, Tensor? noise, Tensor sigma, Tensor sigma_next, " \
                     "str prediction_type, str? backend)"


def _euler_run(return_x0):
    def run(sample, model_output, noise, sigma, sigma_next, prediction_type, backend):
        _check_prediction_type(prediction_type)
        impl = dispatch("euler_step", _sampling._EULER_IMPLS, sample.device, sample.dtype, backend)
        s, s_next = _sampling.check_euler_sigmas(sigma, sigma_next, sample.shape[0], noise is not None)
        out = impl(sample, model_output, noise, s, s_next, prediction_type, return_x0)
        if return_x0:
            return tuple(_fresh(o, sample, model_output, noise) for o in out)
        return _fresh(out, sample, model_output, noise)

    return run


def _euler_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])  # sample, model_output, noise, σ, σ_next
    ctx.params = inputs[5:]


def _euler_backward(return_x0):
    def backward(ctx, *grads):
        sample, model_output, noise, sigma, sigma_next = ctx.saved_tensors
        prediction_type, _backend = ctx.params
        checked = _sampling.Checked

        def reference(sample, model_output, noise):
            return _sampling.euler_step_ref(sample, model_output, checked(sigma), checked(sigma_next), noise=noise,
                                            prediction_type=prediction_type, return_x0=return_x0)

        grad_inputs = _vjp(reference, (sample, model_output, noise), grads, ctx.needs_input_grad[:3])
        return (*grad_inputs, None, None, None, None)

    return backward


_DPM_SCHEMA_ARGS = "(Tensor sample, Tensor model_output, Tensor? x0_last, Tensor sigma, Tensor sigma_next, " \
                   "Tensor? sigma_last, str prediction_type, str solver_type, str? backend)"


def _dpm_run(return_x0):
    def run(sample, model_output, x0_last, sigma, sigma_next, sigma_last, prediction_type, solver_type, backend):
        if (x0_last is None) != (sigma_last is None):
            raise ValueError("x0_last and sigma_last go together (the second-order update needs both)")
        _check_prediction_type(prediction_type)
        if solver_type not in _sampling.SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {_sampling.SOLVER_TYPES}, got {solver_type!r}")
        impl = dispatch("dpm_solver_2m_step", _sampling._DPM_IMPLS, sample.device, sample.dtype, backend)
        s, s_next, s_last = _sampling.check_dpm_sigmas(sigma, sigma_next, sigma_last, sample.shape[0])
        out = impl(sample, model_output, x0_last, s, s_next, s_last, prediction_type, solver_type, return_x0)
        if return_x0:
            return tuple(_fresh(o, sample, model_output, x0_last) for o in out)
        return _fresh(out, sample, model_output, x0_last)

    return run


def _dpm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])  # sample, model_output, x̂0_last, σ, σ_next, σ_last
    ctx.params = inputs[6:]


def _dpm_backward(return_x0):
    def backward(ctx, *grads):
        sample, model_output, x0_last, sigma, sigma_next, sigma_last = ctx.saved_tensors
        prediction_type, solver_type, _backend = ctx.params
        checked = _sampling.Checked

        def reference(sample, model_output, x0_last):
            return _sampling.dpm_solver_2m_step_ref(
                sample, model_output, checked(sigma), checked(sigma_next), x0_last=x0_last,
                sigma_last=None if sigma_last is None else checked(sigma_last), prediction_type=prediction_type,
                solver_type=solver_type, return_x0=return_x0)

        grad_inputs = _vjp(reference, (sample, model_output, x0_last), grads, ctx.needs_input_grad[:3])
        return (*grad_inputs, *([None] * 6))

    return backward


def _step_fake(return_x0):
    def fake(sample, *rest):
        out = sample.new_empty(sample.shape)
        return (out, sample.new_empty(sample.shape)) if return_x0 else out

    return fake


# ---------------------------------------------------------------------------------------------
# group_norm, layer_norm, geglu, timestep_mlp (autograd: the references' VJPs), timestep_embedding (no gradient)
# ---------------------------------------------------------------------------------------------


def _group_norm_format(x):
    """The group_norm kernels keep a 4-D channels-last x's layout; everything else comes out contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _group_norm_run(x, num_groups, weight, bias, eps, silu, backend):
    impl = dispatch("group_norm", _norm._GROUP_NORM_IMPLS, x.device, x.dtype, backend)
    return _fresh(impl(x, num_groups, weight, bias, eps, silu), x, weight, bias, memory_format=_group_norm_format(x))


def _group_norm_fake(x, num_groups, weight, bias, eps, silu, backend):
    return torch.empty_like(x, memory_format=_group_norm_format(x))


def _group_norm_setup(ctx, inputs, output):
    x, num_groups, weight, bias, eps, silu, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.params = (num_groups, eps, silu)


def _group_norm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    num_groups, eps, silu = ctx.params
    wanted = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
    grad_x, grad_w, grad_b = _vjp(
        lambda x, w, b: _norm.group_norm_ref(x, num_groups, w, b, eps, activation="silu" if silu else None),
        (x, weight, bias), (grad,), wanted)
    return grad_x, None, grad_w, grad_b, None, None, None


def _layer_norm_run(x, weight, bias, eps, backend):
    impl = dispatch("layer_norm", _norm._LAYER_NORM_IMPLS, x.device, x.dtype, backend)
    return _fresh(impl(x, weight, bias, eps), x, weight, bias)


def _layer_norm_fake(x, weight, bias, eps, backend):
    return x.new_empty(x.shape)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, eps, _ = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps = eps


def _layer_norm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    eps = ctx.eps
    grads = _vjp(lambda x, w, b: _norm.layer_norm_ref(x, w, b, eps), (x, weight, bias), (grad,),
                 ctx.needs_input_grad[:3])
    return (*grads, None, None)


def _geglu_run(x, backend):
    impl = dispatch("geglu", _norm._GEGLU_IMPLS, x.device, x.dtype, backend)
    return _fresh(impl(x), x)


def _geglu_fake(x, backend):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _geglu_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _geglu_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    (grad_x,) = _vjp(_norm.geglu_ref, (x,), (grad,), ctx.needs_input_grad[:1])
    return grad_x, None


def _timestep_embedding_run(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period, dtype,
                            backend):
    impl = dispatch("timestep_embedding", _norm._TIMESTEP_EMBEDDING_IMPLS, timesteps.device, dtype, backend)
    return _fresh(impl(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period, dtype), timesteps)


def _timestep_embedding_fake(timesteps, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period, dtype,
                             backend):
    return timesteps.new_empty((timesteps.shape[0], dim), dtype=dtype)


def _timestep_mlp_run(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos, downscale_freq_shift, scale,
                      max_period, backend):
    impl = _norm.timestep_mlp_impl(weight_1.device, weight_1.dtype, backend)
    out = impl(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos, downscale_freq_shift, scale, max_period)
    return _fresh(out, timesteps, weight_1, bias_1, weight_2, bias_2)


def _timestep_mlp_fake(timesteps, weight_1, bias_1, weight_2, bias_2, flip_sin_to_cos, downscale_freq_shift, scale,
                       max_period, backend):
    return weight_1.new_empty((timesteps.shape[0], weight_2.shape[0]))


def _timestep_mlp_setup(ctx, inputs, output):
    timesteps, weight_1, bias_1, weight_2, bias_2, *params = inputs
    ctx.save_for_backward(timesteps, weight_1, bias_1, weight_2, bias_2)
    ctx.params = params[:4]  # flip_sin_to_cos, downscale_freq_shift, scale, max_period


def _timestep_mlp_backward(ctx, grad):
    timesteps, weight_1, bias_1, weight_2, bias_2 = ctx.saved_tensors
    flip, shift, scale, max_period = ctx.params

    def reference(w1, b1, w2, b2):
        return _norm.timestep_mlp_ref(timesteps, w1, b1, w2, b2, flip_sin_to_cos=flip, downscale_freq_shift=shift,
                                      scale=scale, max_period=max_period)

    grads = _vjp(reference, (weight_1, bias_1, weight_2, bias_2), (grad,), ctx.needs_input_grad[1:5])
    return (None, *grads, None, None, None, None, None)


SPECS = (
    OpSpec("ddim_step", _DDIM_SCHEMA_ARGS + " -> Tensor", _ddim_run(False), _ddim_fake(False),
           _ddim_backward(False), _ddim_setup),
    OpSpec("ddim_step_x0", _DDIM_SCHEMA_ARGS + " -> (Tensor, Tensor)", _ddim_run(True), _ddim_fake(True),
           _ddim_backward(True), _ddim_setup),
    OpSpec("cfg_combine", "(Tensor model_output, Tensor guidance, float guidance_rescale, str? backend) -> Tensor",
           _cfg_run, _cfg_fake, _cfg_backward, _cfg_setup),
    OpSpec("mask_blend", "(Tensor mask, Tensor a, Tensor b, str? backend, bool check_range=False) -> Tensor",
           _blend_run, _blend_fake, _blend_backward, _blend_setup),
    OpSpec("diffedit_mask", "(Tensor eps_query, Tensor eps_ref, float clamp_ratio, float? threshold, str? backend) -> Tensor",
           _diffedit_run, _diffedit_fake, _diffedit_backward, _diffedit_setup),
    OpSpec("attention", "(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale, str? backend) -> Tensor",
           _attention_run, _attention_fake, _attention_backward, _attention_setup),
    OpSpec("attention_forward",
           "(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, float scale, str? backend) -> (Tensor, Tensor)",
           _attention_lse_run, _attention_lse_fake, _attention_lse_backward, _attention_lse_setup),
    OpSpec("attention_backward",
           "(Tensor q, Tensor k, Tensor v, Tensor out, Tensor dout, Tensor lse, Tensor? key_padding_mask, float scale, "
           "str? backend) -> (Tensor, Tensor, Tensor)",
           _attention_backward_run, _attention_backward_fake),
    OpSpec("downsample_cond",
           "(Tensor image, Tensor mask, Tensor weight, Tensor? bias, int stride, int padding, str? backend) -> Tensor",
           _downsample_run, _downsample_fake, _downsample_backward, _downsample_setup),
    OpSpec("euler_step", _EULER_SCHEMA_ARGS + " -> Tensor", _euler_run(False), _step_fake(False),
           _euler_backward(False), _euler_setup),
    OpSpec("euler_step_x0", _EULER_SCHEMA_ARGS + " -> (Tensor, Tensor)", _euler_run(True), _step_fake(True),
           _euler_backward(True), _euler_setup),
    OpSpec("dpm_solver_2m_step", _DPM_SCHEMA_ARGS + " -> Tensor", _dpm_run(False), _step_fake(False),
           _dpm_backward(False), _dpm_setup),
    OpSpec("dpm_solver_2m_step_x0", _DPM_SCHEMA_ARGS + " -> (Tensor, Tensor)", _dpm_run(True), _step_fake(True),
           _dpm_backward(True), _dpm_setup),
    OpSpec("group_norm",
           "(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, bool silu, str? backend) -> Tensor",
           _group_norm_run, _group_norm_fake, _group_norm_backward, _group_norm_setup),
    OpSpec("layer_norm", "(Tensor x, Tensor? weight, Tensor? bias, float eps, str? backend) -> Tensor",
           _layer_norm_run, _layer_norm_fake, _layer_norm_backward, _layer_norm_setup),
    OpSpec("geglu", "(Tensor x, str? backend) -> Tensor", _geglu_run, _geglu_fake, _geglu_backward, _geglu_setup),
    OpSpec("timestep_embedding",
           "(Tensor timesteps, int dim, bool flip_sin_to_cos, float downscale_freq_shift, float scale, "
           "float max_period, ScalarType dtype, str? backend) -> Tensor",
           _timestep_embedding_run, _timestep_embedding_fake),
    OpSpec("timestep_mlp",
           "(Tensor timesteps, Tensor weight_1, Tensor? bias_1, Tensor weight_2, Tensor? bias_2, bool flip_sin_to_cos, "
           "float downscale_freq_shift, float scale, float max_period, str? backend) -> Tensor",
           _timestep_mlp_run, _timestep_mlp_fake, _timestep_mlp_backward, _timestep_mlp_setup),
)


def _register(spec: OpSpec):
    op = torch.library.custom_op(f"{NAMESPACE}::{spec.name}", spec.run, mutates_args=(), schema=spec.schema)
    op.register_fake(spec.fake)
    if spec.backward is not None:
        op.register_autograd(spec.backward, setup_context=spec.setup_context)
    return op


OPS = {spec.name: _register(spec) for spec in SPECS}
