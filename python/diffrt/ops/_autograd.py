"""Autograd for the ops whose kernels compute only the forward: the backward is the vector-Jacobian
product of the op's torch reference."""

import torch


_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_is_compiling, _dispatch_modes, _grad_enabled = torch.compiler.is_compiling, torch._C._len_torch_dispatch_stack, torch.is_grad_enabled


def direct(*tensors) -> bool:
    """Whether an op may skip torch's dispatcher and run its kernel right away (the dispatcher round trip
    of ``torch.ops.diffrt.*`` costs more than a small kernel): nothing traces the call (torch.compile,
    torch.export, make_fx), no dispatch mode is active (FakeTensorMode, …), every tensor is a plain one
    (no fake, functional or other subclass) and there is no autograd to record."""
    if _is_compiling() or _dispatch_modes():
        return False
    grad = _grad_enabled()
    for t in tensors:  # a plain loop and type checks: this runs on every call
        if t is None:
            continue
        kind = type(t)
        if (kind is not _Tensor and kind is not _Parameter) or (grad and t.requires_grad):
            return False
    return True


def tracing() -> bool:
    """Whether torch.compile, torch.export or a dispatch mode (FakeTensorMode, make_fx) sees this call."""
    return _is_compiling() or _dispatch_modes() > 0


def needs_grad(*inputs) -> bool:
    """Whether autograd must see this call: grad mode is on and some tensor input requires grad."""
    if torch.is_grad_enabled():
        for t in inputs:  # a plain loop and getattr: this runs on every call (numbers have no requires_grad)
            if getattr(t, "requires_grad", False):
                return True
    return False


class _KernelWithReferenceGrad(torch.autograd.Function):
    """Forward: the compiled kernel's result. Backward: the VJP of the torch reference, recomputed from
    the saved inputs (in float32 for float32/bfloat16 inputs, as the reference computes) — the
    ops are elementwise up to per-sample statistics, so the recomputation costs about one forward.
    Subgradients are the reference's: clamp's, torch.quantile's (to the two interpolated neighbours)."""

    @staticmethod
    def forward(ctx, run_kernel, reference, *inputs):
        ctx.reference = reference
        ctx.save_for_backward(*inputs)
        return run_kernel()

    @staticmethod
    def backward(ctx, *grad_outputs):
        wanted = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(w) for t, w in zip(ctx.saved_tensors, wanted)]
            outputs = ctx.reference(*leaves)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        sources = [leaf for leaf, w in zip(leaves, wanted) if w]
        grads = iter(torch.autograd.grad([o for o, _ in pairs], sources, [g for _, g in pairs], allow_unused=True))
        return (None, None, *(next(grads) if w else None for w in wanted))


def with_reference_gradients(run_kernel, reference, inputs: tuple, on_reference: bool):
    """run_kernel() as a differentiable function of `inputs` (tensors, numbers or None, in the order
    `reference` takes them), with the reference's gradients. On the reference backend (float64, any
    device) the reference itself runs under autograd."""
    if on_reference:
        return reference(*inputs)
    tensors = [v if isinstance(v, torch.Tensor) else None for v in inputs]

    def reference_of_tensors(*ts):
        return reference(*(t if isinstance(v, torch.Tensor) else v for t, v in zip(ts, inputs)))

    return _KernelWithReferenceGrad.apply(run_kernel, reference_of_tensors, *tensors)
