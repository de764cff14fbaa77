"""Autograd through the sampler ops: gradients reach every input that requires them, on the compiled
kernels (float32, bfloat16) as on the float64 reference. float64 runs gradcheck against finite
differences; float32 and bfloat16 gradients are compared with the float64 ones."""

import math

import pytest
import torch

from diffrt import ops
from tests._helpers import assert_close_to_ref, rand

DTYPES = [torch.float32, torch.bfloat16]

DDIM_CASES = {
    "eps": dict(),
    "v cfg": dict(prediction_type="v_prediction", guidance_scale=7.5),
    "cfg rescale": dict(guidance_scale=4.0, guidance_rescale=0.7),
    "sample eta noise": dict(prediction_type="sample", eta=1.0),
    "fixed clip clipped-eps": dict(clip_sample_range=1.0, use_clipped_model_output=True),
    "dynamic": dict(dynamic_threshold=0.9),
    "dynamic max cfg rescale": dict(dynamic_threshold=0.8, dynamic_threshold_max=1.5, guidance_scale=3.0,
                                    guidance_rescale=0.5, use_clipped_model_output=True),
    "dynamic max below 1": dict(dynamic_threshold=0.9, dynamic_threshold_max=0.5),
}


def _ddim_inputs(gen, dtype, kw, shape=(2, 3, 5, 7)):
    n = shape[0]
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 2 * n if "guidance_scale" in kw else n, *shape[1:], dtype=dtype, scale=2.0)
    z = rand(gen, *shape, dtype=dtype)
    return x, m, z


def _leaf(t, dtype=None):
    return t.detach().to(dtype or t.dtype).requires_grad_()


def _assert_grad_close(got, want, torch_low, *, dtype, scale):
    """Within float32 arithmetic of `want` (the float64 gradient), or at most 2× as far from it as torch's
    own autograd of the reference in the same low precision (`torch_low`: bfloat16 gradients round the
    upstream gradient and each term, which a sum of nearly cancelling terms magnifies)."""
    slack = 2 * (torch_low.double() - want.double()).abs()
    assert_close_to_ref(got, want, dtype=dtype, scale=scale, slack=slack)


@pytest.mark.parametrize("case", list(DDIM_CASES))
def test_ddim_step_gradcheck_float64(gen, case):
    kw = dict(DDIM_CASES[case])
    x, m, z = (_leaf(t) for t in _ddim_inputs(gen, torch.float64, kw))
    a_t = torch.tensor([0.3, 0.4], dtype=torch.float64, requires_grad=True)
    if kw.get("eta"):
        kw["noise"] = z

    def f(x, m, a_t, *noise):
        extra = {"noise": noise[0]} if noise else {}
        x_prev, x0 = ops.ddim_step(x, m, a_t, 0.6, return_x0=True, **{**kw, **extra})
        return x_prev, x0

    inputs = (x, m, a_t) + ((kw.pop("noise"),) if "noise" in kw else ())
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(DDIM_CASES))
def test_ddim_step_gradients_on_the_kernels_match_float64(isa, gen, dtype, case):
    kw = dict(DDIM_CASES[case])
    x, m, z = _ddim_inputs(gen, dtype, kw)
    a_t = torch.tensor([0.3, 0.4])
    w_grad = [rand(gen, *x.shape), rand(gen, *x.shape)]  # upstream gradients of x_prev and x̂0
    grads = {}
    for which, step in ((dtype, ops.ddim_step), ("torch", ops.ddim_step_ref), (torch.float64, ops.ddim_step)):
        lp = dtype if which == "torch" else which
        leaves = [_leaf(t, lp) for t in (x, m, z)] + [_leaf(a_t, lp if lp == torch.float64 else None)]
        extra = {"noise": leaves[2]} if kw.get("eta") else {}
        x_prev, x0 = step(leaves[0], leaves[1], leaves[3], 0.6, return_x0=True, **kw, **extra)
        assert x_prev.requires_grad and x0.requires_grad
        loss = (x_prev.double() * w_grad[0]).sum() + (x0.double() * w_grad[1]).sum()
        used = leaves if kw.get("eta") else [leaves[0], leaves[1], leaves[3]]
        grads[which] = torch.autograd.grad(loss, used)
    scale = 64 * (1 + 2 * kw.get("guidance_scale", 0.0)) / math.sqrt(0.3)
    for got, low, want in zip(grads[dtype], grads["torch"], grads[torch.float64]):
        assert got.dtype == (dtype if got.dim() > 1 else torch.float32)
        _assert_grad_close(got, want, low, dtype=dtype, scale=scale * (x.numel() if got.dim() == 1 else 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ddim_invert_step_gradients(isa, gen, dtype):
    x, m = rand(gen, 2, 3, 4, 5, dtype=dtype), rand(gen, 4, 3, 4, 5, dtype=dtype)
    g = rand(gen, 2, 3, 4, 5)
    grads = {}
    for which, step in ((dtype, ops.ddim_invert_step), ("torch", ops.ddim_invert_step_ref), (torch.float64, ops.ddim_invert_step)):
        xl, ml = (_leaf(t, dtype if which == "torch" else which) for t in (x, m))
        out = step(xl, ml, 0.7, 0.4, guidance_scale=2.0, clip_sample_range=1.5)
        grads[which] = torch.autograd.grad((out.double() * g).sum(), (xl, ml))
    for got, low, want in zip(*grads.values()):
        _assert_grad_close(got, want, low, dtype=dtype, scale=64.0)


@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_combine_gradcheck_float64(gen, rescale):
    m = _leaf(rand(gen, 4, 3, 5, 5, dtype=torch.float64))
    w = torch.tensor([2.0, 7.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, w: ops.cfg_combine(m, w, guidance_rescale=rescale), (m, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_combine_gradients_on_the_kernels_match_float64(isa, gen, dtype, rescale):
    m = rand(gen, 4, 3, 9, 9, dtype=dtype)
    g = rand(gen, 2, 3, 9, 9)
    grads = {}
    for which, combine in ((dtype, ops.cfg_combine), ("torch", ops.cfg_combine_ref), (torch.float64, ops.cfg_combine)):
        ml = _leaf(m, dtype if which == "torch" else which)
        out = combine(ml, 7.5, guidance_rescale=rescale)
        assert out.requires_grad
        (grads[which],) = torch.autograd.grad((out.double() * g).sum(), (ml,))
    _assert_grad_close(grads[dtype], grads[torch.float64], grads["torch"], dtype=dtype, scale=64.0)


@pytest.mark.parametrize("shared", [False, True])
def test_mask_blend_gradcheck_float64_also_at_binary_mask_values(gen, shared):
    """∂/∂a = m, ∂/∂b = 1 − m, ∂/∂m = Σ_c (a − b): the formula's derivative, also where m is exactly 0 or 1."""
    a, b = (_leaf(rand(gen, 2, 3, 4, 5, dtype=torch.float64)) for _ in range(2))
    mask = torch.rand(1 if shared else 2, 1, 4, 5, generator=gen, dtype=torch.float64)
    mask.view(-1)[:6] = torch.tensor([0.0, 1.0]).repeat(3)
    assert torch.autograd.gradcheck(ops.mask_blend, (_leaf(mask), a, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_mask_blend_gradients_on_the_kernels_match_float64(isa, gen, dtype, shared):
    a, b = rand(gen, 2, 3, 8, 9, dtype=dtype), rand(gen, 2, 3, 8, 9, dtype=dtype)
    mask = torch.rand(1 if shared else 2, 1, 8, 9, generator=gen)
    mask.view(-1)[:10] = 1.0
    g = rand(gen, 2, 3, 8, 9)
    grads = {}
    for which in (dtype, torch.float64):
        leaves = [_leaf(mask, torch.float32 if which != torch.float64 else which), _leaf(a, which), _leaf(b, which)]
        out = ops.mask_blend(*leaves)
        assert out.requires_grad
        grads[which] = torch.autograd.grad((out.double() * g).sum(), leaves)
    # ∂/∂m sums C terms of the upstream gradient, which bfloat16 rounds (relative eps each)
    terms = (g.abs() * (a.double() - b.double()).abs()).sum(dim=1, keepdim=True)
    terms = terms.sum(dim=0, keepdim=True) if shared else terms
    for got, want, leaf_dtype, slack in zip(grads[dtype], grads[torch.float64], (torch.float32, dtype, dtype),
                                           (torch.finfo(dtype).eps * terms, 0.0, 0.0)):
        assert got.dtype == leaf_dtype
        assert_close_to_ref(got, want, dtype=dtype, scale=64.0, slack=slack)


def test_mask_blend_bool_mask_is_not_differentiable_but_a_and_b_are(gen):
    a, b = _leaf(rand(gen, 2, 3, 4, 4)), _leaf(rand(gen, 2, 3, 4, 4))
    select = torch.rand(2, 1, 4, 4, generator=gen) > 0.5
    ga, gb = torch.autograd.grad(ops.mask_blend(select, a, b).sum(), (a, b))
    assert torch.equal(ga, select.float().expand_as(ga)) and torch.equal(gb, (~select).float().expand_as(gb))


@pytest.mark.parametrize("dtype", DTYPES)
def test_diffedit_soft_mask_gradients_on_the_kernels_match_float64(isa, gen, dtype):
    q, r = rand(gen, 2, 3, 2, 6, 7, dtype=dtype), rand(gen, 2, 3, 2, 6, 7, dtype=dtype)
    g = rand(gen, 2, 1, 6, 7)
    grads = {}
    for which, mask in ((dtype, ops.diffedit_mask), ("torch", ops.diffedit_mask_ref), (torch.float64, ops.diffedit_mask)):
        ql, rl = (_leaf(t, dtype if which == "torch" else which) for t in (q, r))
        out = mask(ql, rl, clamp_ratio=1.5, threshold=None)
        assert out.requires_grad
        grads[which] = torch.autograd.grad((out.double() * g).sum(), (ql, rl))
    for got, low, want in zip(*grads.values()):
        _assert_grad_close(got, want, low, dtype=dtype, scale=64.0)


def test_diffedit_soft_mask_gradcheck_float64(gen):
    q, r = (_leaf(rand(gen, 2, 2, 2, 4, 5, dtype=torch.float64)) for _ in range(2))
    assert torch.autograd.gradcheck(lambda q, r: ops.diffedit_mask(q, r, clamp_ratio=1.5, threshold=None), (q, r))


def test_diffedit_binary_mask_is_a_constant_as_in_the_reference(gen):
    """Thresholding is a step function (zero gradient almost everywhere): like its reference (and
    torch's `(x > t).float()`), the binary mask does not require grad."""
    q, r = _leaf(rand(gen, 3, 2, 6, 6)), rand(gen, 3, 2, 6, 6)
    assert not ops.diffedit_mask(q, r, threshold=0.5).requires_grad
    assert not ops.diffedit_mask_ref(q, r, threshold=0.5).requires_grad


def test_no_graph_under_no_grad(gen):
    x, m = _leaf(rand(gen, 2, 3, 4, 4)), rand(gen, 2, 3, 4, 4)
    with torch.no_grad():
        assert not ops.ddim_step(x, m, 0.3, 0.5).requires_grad
    assert ops.ddim_step(x, m, 0.3, 0.5).requires_grad


@pytest.mark.parametrize("name", ["eta", "guidance_rescale", "clip_sample_range"])
def test_a_scalar_that_requires_grad_and_has_no_gradient_raises(name):
    """Gradients reach tensors and the per-sample ᾱ and w; the other scalars are constants, and a
    tensor of them that requires grad is an error rather than a silently dropped gradient."""
    x, m, z = torch.randn(2, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.randn(2, 3, 4, 4)
    value = torch.tensor({"eta": 0.5, "guidance_rescale": 0.5, "clip_sample_range": 1.0}[name], requires_grad=True)
    with pytest.raises(ValueError, match=name):
        ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=2.0, noise=z, **{name: value})
    with torch.no_grad():  # no graph is being built: the value is simply used
        ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=2.0, noise=z, **{name: value})
