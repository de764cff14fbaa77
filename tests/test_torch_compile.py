"""torch.compile and torch.export through diffrt: every op is a ``torch.ops.diffrt.*`` custom op with fake
and autograd implementations, so graphs hold each op as one node and never break at it.

Graph capture is what these tests check: they compile with the "eager" and "aot_eager" backends (the
inductor test is marked slow)."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from diffrt import ops
from diffrt.models.unet import AttentionBlock, UNet, UNetConfig
from diffrt.ops import _library
from tests._helpers import rand

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _explain(fn, *args, **kwargs):
    """torch._dynamo.explain of fn(*args), asserting one graph without breaks; returns the explanation."""
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert not [r for r in reasons if "diffrt" in r], reasons
    assert explanation.graph_count == 1
    return explanation


def _diffrt_targets(graph_module):
    return [str(n.target) for n in graph_module.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("diffrt.")]


def _export_targets(exported):
    return [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]


def _assert_close(got, want, magnitude_of):
    """float32 agreement: a compiled graph runs the same kernels, up to reordered float32 arithmetic."""
    tol = 256 * EPS32 * max(1.0, magnitude_of.abs().max().item())
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol, f"max difference {err:.3g} > {tol:.3g}"


# ---------------------------------------------------------------------------------------------
# opcheck: schema, fake tensors, autograd registration and AOT dispatch of each custom op
# ---------------------------------------------------------------------------------------------


def _grad(t):
    return t.requires_grad_()


def _ddim_args(gen, dtype, x0=False, guided=False, eta=False):
    x = _grad(rand(gen, 2, 3, 4, 5, dtype=dtype))
    m = _grad(rand(gen, 4 if guided else 2, 3, 4, 5, dtype=dtype))
    z = _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)) if eta else None
    f64 = torch.float64
    return (x, m, z, torch.tensor([0.3, 0.4], dtype=f64), torch.tensor([0.6, 0.7], dtype=f64),
            torch.tensor([7.5, 3.0], dtype=f64) if guided else None, 0.5 if eta else 0.0,
            0.7 if guided else 0.0, "v_prediction" if guided else "epsilon", "dynamic" if x0 else "none", 0.0,
            0.9 if x0 else 0.0, 1.5 if x0 else math.inf, x0, None)


def _attention_args(gen, dtype, masked=True):
    q, k, v = (_grad(rand(gen, 2, 2, n, 8, dtype=dtype)) for n in (5, 7, 7))
    mask = torch.rand(2, 7, generator=gen) < 0.7 if masked else None
    if mask is not None:
        mask[:, 0] = True
    return q, k, v, mask, 0.3, None


def _attention_backward_args(gen, dtype):
    q, k, v, mask, scale, backend = (t.detach() if isinstance(t, torch.Tensor) else t
                                     for t in _attention_args(gen, dtype))
    out, lse = torch.ops.diffrt.attention_forward.default(q, k, v, mask, scale, backend)
    return q, k, v, out, rand(gen, *out.shape, dtype=dtype), lse, mask, scale, backend


def _sigma_step_args(gen, dtype, prediction_type, noise):
    x, m = (_grad(rand(gen, 2, 3, 4, 5, dtype=dtype)) for _ in range(2))
    z = _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)) if noise else None
    f64 = torch.float64
    return x, m, z, torch.tensor([2.5, 1.2], dtype=f64), torch.tensor([1.5, 0.0], dtype=f64), prediction_type, None


def _dpm_args(gen, dtype, prediction_type, second_order=True, solver="midpoint"):
    x, m = (_grad(rand(gen, 2, 3, 4, 5, dtype=dtype)) for _ in range(2))
    f64 = torch.float64
    last = (_grad(rand(gen, 2, 3, 4, 5, dtype=dtype)), torch.tensor([3.0, 1.5], dtype=f64)) if second_order else (
        None, None)
    return (x, m, last[0], torch.tensor([2.5, 1.2], dtype=f64), torch.tensor([1.5, 0.3], dtype=f64), last[1],
            prediction_type, solver, None)


OPCHECK_CASES = {
    "ddim_step": lambda gen, dtype: _ddim_args(gen, dtype),
    "ddim_step guided eta": lambda gen, dtype: _ddim_args(gen, dtype, guided=True, eta=True),
    "ddim_step_x0 dynamic": lambda gen, dtype: _ddim_args(gen, dtype, x0=True),
    # x̂0 = model_output: in float64 the reference returns that input itself, which the op must copy
    "ddim_step_x0 sample": lambda gen, dtype: (*_ddim_args(gen, dtype)[:8], "sample", "none", 0.0, 0.0, math.inf,
                                               False, None),
    "cfg_combine": lambda gen, dtype: (_grad(rand(gen, 4, 3, 4, 5, dtype=dtype)),
                                       torch.tensor([7.5, 2.0], dtype=torch.float64), 0.5, None),
    "mask_blend": lambda gen, dtype: (_grad(torch.rand(2, 1, 4, 5, generator=gen).to(dtype)),
                                      _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)),
                                      _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)), None),
    "mask_blend check_range": lambda gen, dtype: (_grad(torch.rand(1, 1, 4, 5, generator=gen).to(dtype)),
                                                  _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)),
                                                  _grad(rand(gen, 2, 3, 4, 5, dtype=dtype)), None, True),
    "diffedit_mask": lambda gen, dtype: (_grad(rand(gen, 2, 3, 4, 6, 5, dtype=dtype)),
                                         _grad(rand(gen, 2, 3, 4, 6, 5, dtype=dtype)), 3.0, None, None),
    "diffedit_mask thresholded": lambda gen, dtype: (rand(gen, 3, 4, 6, 5, dtype=dtype),
                                                     rand(gen, 3, 4, 6, 5, dtype=dtype), 3.0, 0.5, None),
    "attention": lambda gen, dtype: _attention_args(gen, dtype),
    "attention_forward": lambda gen, dtype: _attention_args(gen, dtype),
    "attention_backward": _attention_backward_args,
    "downsample_cond": lambda gen, dtype: (_grad(rand(gen, 2, 3, 8, 8, dtype=dtype)),
                                           _grad(rand(gen, 1, 1, 8, 8, dtype=dtype)),
                                           _grad(rand(gen, 5, 4, 4, 4, dtype=dtype)),
                                           _grad(rand(gen, 5, dtype=dtype)), 2, 1, None),
    "euler_step": lambda gen, dtype: _sigma_step_args(gen, dtype, "epsilon", noise=False),
    "euler_step ancestral v": lambda gen, dtype: _sigma_step_args(gen, dtype, "v_prediction", noise=True),
    # x̂0 = model_output for x0-prediction: in float64 the reference returns that input itself
    "euler_step_x0 sample": lambda gen, dtype: _sigma_step_args(gen, dtype, "sample", noise=True),
    "dpm_solver_2m_step": lambda gen, dtype: _dpm_args(gen, dtype, "epsilon", second_order=False),
    "dpm_solver_2m_step heun": lambda gen, dtype: _dpm_args(gen, dtype, "v_prediction", solver="heun"),
    "dpm_solver_2m_step_x0 midpoint": lambda gen, dtype: _dpm_args(gen, dtype, "sample"),
    "dpm_solver_2m_step_x0 first order": lambda gen, dtype: _dpm_args(gen, dtype, "epsilon", second_order=False),
    "group_norm silu": lambda gen, dtype: (_grad(rand(gen, 2, 6, 4, 5, dtype=dtype)), 3,
                                           _grad(rand(gen, 6, dtype=dtype)), _grad(rand(gen, 6, dtype=dtype)),
                                           1e-5, True, None),
    "group_norm channels_last": lambda gen, dtype: (
        _grad(rand(gen, 2, 6, 4, 5, dtype=dtype).to(memory_format=torch.channels_last)), 2,
        _grad(rand(gen, 6)), None, 1e-3, False, None),
    "group_norm no affine": lambda gen, dtype: (_grad(rand(gen, 2, 4, 7, dtype=dtype)), 4, None, None, 1e-5,
                                                False, None),
    "layer_norm": lambda gen, dtype: (_grad(rand(gen, 2, 3, 8, dtype=dtype)), _grad(rand(gen, 8, dtype=dtype)),
                                      _grad(rand(gen, 8, dtype=dtype)), 1e-5, None),
    "layer_norm no affine": lambda gen, dtype: (_grad(rand(gen, 5, 6, dtype=dtype)), None, None, 1e-6, None),
    "geglu": lambda gen, dtype: (_grad(rand(gen, 2, 3, 10, dtype=dtype)), None),
    "timestep_embedding": lambda gen, dtype: (torch.randint(0, 1000, (3,), generator=gen), 9, False, 1.0, 1.0,
                                              10000.0, dtype, None),
    "timestep_embedding flipped": lambda gen, dtype: (torch.rand(3, generator=gen, dtype=torch.float64) * 999, 16,
                                                      True, 0.0, 2.0, 1000.0, dtype, None),
    "timestep_mlp": lambda gen, dtype: (torch.randint(0, 1000, (3,), generator=gen),
                                        _grad(rand(gen, 8, 5, dtype=dtype)), _grad(rand(gen, 8, dtype=dtype)), _grad(rand(gen, 6, 8, dtype=dtype)),
                                        _grad(rand(gen, 6, dtype=dtype)), True, 0.0, 1.0, 10000.0, None),
    "timestep_mlp no biases": lambda gen, dtype: (torch.rand(2, generator=gen, dtype=torch.float64) * 999,
                                                  _grad(rand(gen, 7, 4, dtype=dtype)), None,
                                                  _grad(rand(gen, 3, 7, dtype=dtype)), None, False, 1.0, 2.0, 1000.0,
                                                  None),
}


def test_every_op_is_registered_and_checked():
    assert set(_library.OPS) == {case.split()[0] for case in OPCHECK_CASES}
    for name in _library.OPS:
        assert hasattr(torch.ops.diffrt, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(gen, case, dtype):
    op = getattr(torch.ops.diffrt, case.split()[0]).default
    args = OPCHECK_CASES[case](gen, dtype)
    torch.library.opcheck(op, args)


# ---------------------------------------------------------------------------------------------
# The public ops under torch.compile: one graph, each op one node, the eager results
# ---------------------------------------------------------------------------------------------


def _every_op(x, m2, q, k, v, key_mask, mask, image, cond_mask, weight, bias, buf, t):
    x_prev = ops.ddim_step(x, m2, 0.5, 0.7, guidance_scale=7.5, guidance_rescale=0.5)
    x_next, x0 = ops.ddim_invert_step(x, m2, 0.7, 0.5, guidance_scale=2.0, return_x0=True)
    guided = ops.cfg_combine(m2, 4.0)
    blended = ops.mask_blend(mask, x_prev, x_next)
    soft = ops.diffedit_mask(m2[None], m2.flip(0)[None], threshold=None)
    binary = ops.diffedit_mask(m2[None], m2.flip(0)[None])
    attended = ops.attention(q, k, v, key_padding_mask=key_mask)
    cond = ops.downsample_cond(image, cond_mask, weight, bias, stride=2, padding=1, out=buf, channel_offset=1)
    euler = ops.euler_step(x, guided, 2.0, 1.5)
    ancestral, euler_x0 = ops.euler_step(x, guided, 2.0, 1.5, noise=m2[2:], return_x0=True)
    dpm, dpm_x0 = ops.dpm_solver_2m_step(x, guided, 1.5, 0.8, prediction_type="v_prediction", return_x0=True)
    dpm2 = ops.dpm_solver_2m_step(dpm, guided, 0.8, 0.3, x0_last=dpm_x0, sigma_last=1.5)
    normed = ops.group_norm(image, 3, weight[0, :3, 0, 0], bias[:3], activation="silu")
    layer = ops.layer_norm(q, weight[0, 0, 0].repeat(4), None)
    gated = ops.geglu(q)
    embedded = ops.timestep_embedding(t, 12, flip_sin_to_cos=True)
    square = weight.reshape(16, 16)
    mlp = ops.timestep_mlp(t, square, bias.repeat(4), square.flip(0), None, flip_sin_to_cos=True)
    return (x_prev, x0, guided, blended, soft, binary, attended, cond, euler, ancestral, euler_x0, dpm, dpm2, normed,
            layer, gated, embedded, mlp)


EVERY_OP_NODES = ["diffrt.ddim_step.default", "diffrt.ddim_step_x0.default", "diffrt.cfg_combine.default",
                  "diffrt.mask_blend.default", "diffrt.diffedit_mask.default", "diffrt.diffedit_mask.default",
                  "diffrt.attention.default", "diffrt.downsample_cond.default", "diffrt.euler_step.default",
                  "diffrt.euler_step_x0.default", "diffrt.dpm_solver_2m_step_x0.default",
                  "diffrt.dpm_solver_2m_step.default", "diffrt.group_norm.default", "diffrt.layer_norm.default",
                  "diffrt.geglu.default", "diffrt.timestep_embedding.default", "diffrt.timestep_mlp.default"]


def _every_op_inputs(gen):
    x = rand(gen, 2, 3, 8, 8)
    key_mask = torch.rand(2, 6, generator=gen) < 0.6
    key_mask[:, 0] = True
    return (x, rand(gen, 4, 3, 8, 8), rand(gen, 2, 2, 10, 16), rand(gen, 2, 2, 6, 16), rand(gen, 2, 2, 6, 16),
            key_mask, torch.rand(2, 1, 8, 8, generator=gen), rand(gen, 2, 3, 16, 16),
            (torch.rand(2, 1, 16, 16, generator=gen) > 0.5).float(), rand(gen, 4, 4, 4, 4), rand(gen, 4),
            torch.zeros(2, 6, 8, 8), torch.randint(0, 1000, (2,), generator=gen))


def test_every_op_compiles_into_one_graph_of_diffrt_nodes(gen):
    inputs = _every_op_inputs(gen)
    explanation = _explain(_every_op, *inputs)
    targets = _diffrt_targets(explanation.graphs[0])
    assert sorted(targets) == sorted(EVERY_OP_NODES)
    want = _every_op(*[t.clone() for t in inputs])
    got = torch.compile(_every_op, backend="aot_eager", fullgraph=True)(*[t.clone() for t in inputs])
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.equal(g, w)  # the same kernels on the same inputs


def test_every_op_exports_as_one_node_each(gen):
    class EveryOp(torch.nn.Module):
        def forward(self, *inputs):
            return _every_op(*inputs)

    inputs = _every_op_inputs(gen)
    exported = torch.export.export(EveryOp(), tuple(t.clone() for t in inputs))
    targets = [t for t in _export_targets(exported) if t.startswith("diffrt.")]
    assert sorted(targets) == sorted(EVERY_OP_NODES)
    want = _every_op(*[t.clone() for t in inputs])
    for got, w in zip(exported.module()(*[t.clone() for t in inputs]), want):
        assert torch.equal(got, w)


def test_validation_still_runs_when_compiled(gen):
    x = rand(gen, 2, 3, 4, 4)

    def bad(x):
        return ops.ddim_step(x, x, 0.5, 1.5)

    # (with fullgraph=True dynamo reports the raise as unsupported; without, the error reaches the caller)
    with pytest.raises(ValueError, match="alpha_prev must lie in"):
        torch.compile(bad, backend="eager")(x)
    with pytest.raises(ops.UnsupportedBackendError, match="unknown backend"):
        torch.compile(lambda x: ops.ddim_step(x, x, 0.5, 0.7, backend="nope"), backend="eager")(x)


def test_fake_tensors_give_the_output_metadata(gen):
    with FakeTensorMode() as mode:
        x = mode.from_tensor(rand(gen, 2, 3, 4, 4, dtype=torch.bfloat16))
        m = mode.from_tensor(rand(gen, 4, 3, 4, 4, dtype=torch.bfloat16))
        x_prev, x0 = ops.ddim_step(x, m, 0.5, 0.7, guidance_scale=3.0, return_x0=True)
        mask = ops.diffedit_mask(m[None], m[None], threshold=None)
    for out in (x_prev, x0):
        assert out.shape == (2, 3, 4, 4) and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert mask.shape == (1, 1, 4, 4) and mask.dtype == torch.float32


def test_gradients_through_compiled_attention_match_eager(gen):
    q, k, v = (rand(gen, 2, 2, 9, 16) for _ in range(3))
    key_mask = torch.rand(2, 9, generator=gen) < 0.7
    key_mask[:, 0] = True

    def loss(q, k, v):
        return (ops.attention(q, k, v, key_padding_mask=key_mask) ** 2).sum()

    grads = {}
    for name, fn in (("eager", loss), ("compiled", torch.compile(loss, backend="aot_eager", fullgraph=True))):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grads[name] = torch.autograd.grad(fn(*leaves), leaves)
    for got, want in zip(grads["compiled"], grads["eager"]):
        assert torch.equal(got, want)  # the same fused forward and backward kernels


def test_gradients_through_compiled_sampling_ops_match_eager(gen):
    x, m2, mask = rand(gen, 2, 3, 4, 4), rand(gen, 4, 3, 4, 4), torch.rand(2, 1, 4, 4, generator=gen)

    def loss(x, m2, mask):
        step = ops.ddim_step(x, m2, 0.5, 0.7, guidance_scale=3.0, clip_sample_range=1.0)
        return (ops.mask_blend(mask, step, ops.cfg_combine(m2, 2.0)) ** 2).sum()

    grads = {}
    for name, fn in (("eager", loss), ("compiled", torch.compile(loss, backend="aot_eager", fullgraph=True))):
        leaves = [t.clone().requires_grad_() for t in (x, m2, mask)]
        grads[name] = torch.autograd.grad(fn(*leaves), leaves)
    for got, want in zip(grads["compiled"], grads["eager"]):
        _assert_close(got, want, want)


def test_gradients_through_compiled_sigma_steps_and_norms_are_the_references(gen):
    x, m, z, last = (rand(gen, 2, 4, 4, 6) for _ in range(4))
    w, b, h = rand(gen, 4), rand(gen, 4), rand(gen, 2, 5, 12)

    def loss(step_ref, norm_ref, x, m, z, last, w, b, h):
        euler = step_ref["euler"](x, m, 1.8, 0.9, noise=z, prediction_type="v_prediction")
        dpm = step_ref["dpm"](euler, m, 0.9, 0.4, x0_last=last, sigma_last=1.8, solver_type="heun")
        normed = norm_ref["group_norm"](dpm, 2, w, b, activation="silu")
        gated = norm_ref["geglu"](norm_ref["layer_norm"](h, w.repeat(3), b.repeat(3)))
        return (normed**2).sum() + (gated**2).sum()

    ours = (dict(euler=ops.euler_step, dpm=ops.dpm_solver_2m_step),
            dict(group_norm=ops.group_norm, layer_norm=ops.layer_norm, geglu=ops.geglu))
    refs = (dict(euler=ops.euler_step_ref, dpm=ops.dpm_solver_2m_step_ref),
            dict(group_norm=ops.group_norm_ref, layer_norm=ops.layer_norm_ref, geglu=ops.geglu_ref))
    compiled = torch.compile(lambda *a: loss(*ours, *a), backend="aot_eager", fullgraph=True)
    inputs = (x, m, z, last, w, b, h)
    got_leaves = [t.clone().requires_grad_() for t in inputs]
    got = torch.autograd.grad(compiled(*got_leaves), got_leaves)
    want_leaves = [t.clone().requires_grad_() for t in inputs]
    want = torch.autograd.grad(loss(*refs, *want_leaves), want_leaves)
    for g, r in zip(got, want):
        _assert_close(g, r, r)


def test_the_custom_ops_check_their_string_arguments(gen):
    x, sigma = rand(gen, 2, 3, 4), torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="prediction_type must be one of .*, got 'eps'"):
        torch.ops.diffrt.euler_step(x, x, None, sigma, sigma * 0.5, "eps", None)
    with pytest.raises(ValueError, match="solver_type must be one of .*, got 'rk4'"):
        torch.ops.diffrt.dpm_solver_2m_step(x, x, None, sigma, sigma * 0.5, None, "epsilon", "rk4", None)
    with pytest.raises(ValueError, match="x0_last and sigma_last go together"):
        torch.ops.diffrt.dpm_solver_2m_step(x, x, x, sigma, sigma * 0.5, None, "epsilon", "midpoint", None)


# ---------------------------------------------------------------------------------------------
# Models: diffrt's UNet and a diffusers UNet with DiffrtAttnProcessor
# ---------------------------------------------------------------------------------------------

UNET = dict(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
            head_dim=8, groups=4, context_dim=12)


def _diffrt_unet():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**UNET)).eval()
    with torch.no_grad():  # no zero initialisations: every path reaches the output
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    return model


def _diffrt_unet_inputs(gen, batch=2):
    x = rand(gen, batch, 3, 8, 8)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    context_mask = torch.ones(batch, 5, dtype=torch.bool)
    context_mask[0, 3:] = False
    return x, t, {"context": rand(gen, batch, 5, 12), "context_mask": context_mask}


def _diffrt_attention_calls(model):
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    return sum(2 if b.cross else 1 for b in blocks)


@torch.no_grad()
def test_diffrt_unet_compiles_without_graph_breaks_and_matches_eager(gen):
    model = _diffrt_unet()
    x, t, cond = _diffrt_unet_inputs(gen)
    explanation = _explain(model, x, t, cond)
    assert _diffrt_targets(explanation.graphs[0]) == ["diffrt.attention.default"] * _diffrt_attention_calls(model)
    want = model(x, t, cond)
    got = torch.compile(model, backend="aot_eager", fullgraph=True)(x, t, cond)
    _assert_close(got, want, want)


def test_diffrt_unet_exports_with_one_node_per_attention(gen):
    model = _diffrt_unet()
    x, t, cond = _diffrt_unet_inputs(gen)
    with torch.no_grad():
        exported = torch.export.export(model, (x, t, cond))
    targets = _export_targets(exported)
    assert [n for n in targets if n.startswith("diffrt.")] == (
        ["diffrt.attention.default"] * _diffrt_attention_calls(model))
    assert not [n for n in targets if "softmax" in n or "scaled_dot_product" in n]
    with torch.no_grad():
        _assert_close(exported.module()(x, t, cond), model(x, t, cond), model(x, t, cond))


def _image_conditioned_unet():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**UNET, "context_dim": None}, cond_image=True, cond_image_size=16, cond_channels=4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    return model.eval()


@torch.no_grad()
def test_image_conditioned_unet_keeps_downsample_cond_as_one_node(gen):
    model = _image_conditioned_unet()
    x, t = rand(gen, 2, 3, 8, 8), torch.randint(0, 1000, (2,), generator=gen)
    cond = {"image": rand(gen, 2, 3, 16, 16), "mask": (torch.rand(2, 1, 16, 16, generator=gen) > 0.5).float()}
    explanation = _explain(model, x, t, cond)
    assert _diffrt_targets(explanation.graphs[0]).count("diffrt.downsample_cond.default") == 1
    exported = torch.export.export(model, (x, t, cond))
    assert _export_targets(exported).count("diffrt.downsample_cond.default") == 1
    want = model(x, t, cond)
    _assert_close(torch.compile(model, backend="aot_eager", fullgraph=True)(x, t, cond), want, want)
    _assert_close(exported.module()(x, t, cond), want, want)


def _diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    from diffrt.integrations.diffusers import DiffrtAttnProcessor

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=8, norm_num_groups=8,
    ).eval()
    unet.set_attn_processor(DiffrtAttnProcessor())
    return unet


@torch.no_grad()
def test_diffusers_unet_with_diffrt_attention_compiles_without_graph_breaks(gen):
    unet = _diffusers_unet()
    x, t, text = rand(gen, 2, 4, 8, 8), torch.tensor([10, 500]), rand(gen, 2, 7, 16)

    def run(x, t, text):
        return unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    explanation = _explain(run, x, t, text)
    assert _diffrt_targets(explanation.graphs[0]) == ["diffrt.attention.default"] * len(unet.attn_processors)
    want = run(x, t, text)
    _assert_close(torch.compile(run, backend="aot_eager", fullgraph=True)(x, t, text), want, want)


def test_diffusers_unet_with_diffrt_attention_exports_one_node_per_attention(gen):
    unet = _diffusers_unet()
    x, t, text = rand(gen, 2, 4, 8, 8), torch.tensor([10, 500]), rand(gen, 2, 7, 16)

    class Run(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, t, text):
            return self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    with torch.no_grad():
        exported = torch.export.export(Run(), (x, t, text))
        targets = _export_targets(exported)
        assert [n for n in targets if n.startswith("diffrt.")] == ["diffrt.attention.default"] * len(unet.attn_processors)
        assert not [n for n in targets if "softmax" in n or "scaled_dot_product" in n]
        want = Run()(x, t, text)
        _assert_close(exported.module()(x, t, text), want, want)


# ---------------------------------------------------------------------------------------------
# A sampler step: model on [x; x] with [uncond; cond], then the fused guided DDIM step
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def test_compiled_guided_sampling_step_has_no_graph_break(gen):
    model = _diffrt_unet()
    x, _, cond = _diffrt_unet_inputs(gen, batch=1)
    uncond = {"context": torch.zeros_like(cond["context"]), "context_mask": cond["context_mask"]}
    batched = {key: torch.cat([uncond[key], cond[key]]) for key in cond}

    def step(x, t, alpha_t, alpha_prev):
        out = model(torch.cat([x, x]), t.expand(2), batched)
        return ops.ddim_step(x, out, alpha_t, alpha_prev, guidance_scale=5.0, guidance_rescale=0.7)

    t = torch.tensor([900])
    explanation = _explain(step, x, t, 0.3, 0.5)
    targets = _diffrt_targets(explanation.graphs[0])
    assert targets[-1] == "diffrt.ddim_step.default"
    assert targets.count("diffrt.attention.default") == _diffrt_attention_calls(model)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    want = got = x
    for timestep, a_t, a_prev in ((900, 0.1, 0.3), (600, 0.3, 0.6), (300, 0.6, 0.9)):  # a three-step loop
        want = step(want, torch.tensor([timestep]), a_t, a_prev)
        got = compiled(got, torch.tensor([timestep]), a_t, a_prev)
        _assert_close(got, want, want)


@torch.no_grad()
def test_compiled_step_takes_tensors_of_alphas_without_recompiling(gen):
    """ᾱ and w as tensors are graph inputs: one graph serves every step of the loop, and their values are
    checked when the op runs."""
    from torch._dynamo.testing import CompileCounter

    x, m2 = rand(gen, 2, 3, 4, 4), rand(gen, 4, 3, 4, 4)

    def step(x, m2, alpha_t, alpha_prev, w):
        return ops.ddim_step(x, m2, alpha_t, alpha_prev, guidance_scale=w, eta=0.5, noise=m2[:2])

    _explain(step, x, m2, torch.tensor(0.3), torch.tensor([0.5, 0.6]), torch.tensor(4.0))
    counter = CompileCounter()
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for a_t, a_prev, w in ((0.1, 0.3, 2.0), (0.3, 0.6, 4.0), (0.6, 0.9, 6.0)):
        args = (torch.tensor(a_t, dtype=torch.float64), torch.tensor([a_prev, a_prev + 0.05]), torch.tensor(w))
        assert torch.equal(compiled(x, m2, *args), step(x, m2, *args))
    assert counter.frame_count == 1
    with pytest.raises(ValueError, match="alpha_prev must lie in"):
        compiled(x, m2, torch.tensor(0.3), torch.tensor([0.5, 1.5]), torch.tensor(2.0))
    with pytest.raises(ValueError, match="eta > 0 needs"):
        compiled(x, m2, torch.tensor(0.7), torch.tensor([0.5, 0.6]), torch.tensor(2.0))
    with pytest.raises(ValueError, match="alpha_t must be a number or a 1-D tensor of 2 per-sample values"):
        torch.compile(step, backend="eager")(x, m2, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6]),
                                             torch.tensor(2.0))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside inductor
@torch.no_grad()
def test_inductor_compiles_the_diffrt_unet(gen):
    model = _diffrt_unet()
    x, t, cond = _diffrt_unet_inputs(gen)
    want = model(x, t, cond)
    _assert_close(torch.compile(model, backend="inductor", fullgraph=True)(x, t, cond), want, want)


# ---------------------------------------------------------------------------------------------
# The σ-space schedulers' steps: σ as tensors, one graph for every step of a sampling loop
# ---------------------------------------------------------------------------------------------


def _euler(x, m, sigma, sigma_next):
    return ops.euler_step(x, m, sigma, sigma_next, return_x0=True)


def _euler_ancestral(x, m, sigma, sigma_next, noise):
    return ops.euler_step(x, m, sigma, sigma_next, noise=noise, return_x0=True)


def _dpm_solver(x, m, sigma, sigma_next, x0_last, sigma_last):
    return ops.dpm_solver_2m_step(x, m, sigma, sigma_next, x0_last=x0_last, sigma_last=sigma_last, return_x0=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # inside diffusers
@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "DPMSolverMultistepScheduler"])
@torch.no_grad()
def test_compiled_scheduler_step_serves_every_step_without_recompiling(gen, name):
    """The op call of each σ-space scheduler's step, compiled with σ, σ_next (and σ_last) as tensors: no graph
    break, one graph for every step (DPM-Solver: one for the first-order and one for the second-order
    update), and the scheduler's own step results bit for bit; the σ values are checked when the op runs."""
    pytest.importorskip("diffusers")
    from torch._dynamo.testing import CompileCounter

    from diffrt.integrations import schedulers

    scheduler = getattr(schedulers, name)()
    scheduler.set_timesteps(6)
    sigmas = scheduler.sigmas.to(torch.float64)
    fn = {"EulerDiscreteScheduler": _euler, "EulerAncestralDiscreteScheduler": _euler_ancestral,
          "DPMSolverMultistepScheduler": _dpm_solver}[name]
    counter = CompileCounter()
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    x = rand(gen, 2, 3, 8, 8) * float(scheduler.init_noise_sigma)
    x0_last, last_step, first_steps = None, len(scheduler.timesteps) - 1, []
    for i, t in enumerate(scheduler.timesteps):
        m = rand(gen, 2, 3, 8, 8)
        args = (x, m, sigmas[i], sigmas[i + 1])
        if name == "EulerAncestralDiscreteScheduler":
            noise = rand(gen, 2, 3, 8, 8)
            args += (noise,)
            want = scheduler.step(m, t, x, noise=noise, return_dict=False)
        elif name == "DPMSolverMultistepScheduler":  # diffusers' lower_order_final: first order at the ends
            second_order = 0 < i < last_step
            args += (x0_last, sigmas[i - 1]) if second_order else (None, None)
            want = scheduler.step(m, t, x, return_dict=False)
        else:
            want = scheduler.step(m, t, x, return_dict=False)
        if i <= 1:
            first_steps.append(args)
        got = compiled(*args)
        assert torch.equal(got[0], want[0])
        if len(want) > 1:
            assert torch.equal(got[1], want[1])
        x, x0_last = got
    assert counter.frame_count == (2 if name.startswith("DPM") else 1)
    for args in first_steps:
        explanation = _explain(fn, *args)
        assert _diffrt_targets(explanation.graphs[0]) == [
            "diffrt.dpm_solver_2m_step_x0.default" if name.startswith("DPM") else "diffrt.euler_step_x0.default"]
    x, m = rand(gen, 2, 3, 8, 8), rand(gen, 2, 3, 8, 8)
    one, two = torch.tensor(1.0, dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)
    if name == "EulerAncestralDiscreteScheduler":
        with pytest.raises(ValueError, match=r"the ancestral step \(noise given\) needs sigma_next <= sigma"):
            compiled(x, m, one, two, m)
    elif name == "DPMSolverMultistepScheduler":
        with pytest.raises(ValueError, match="sigma_last must be > sigma"):
            compiled(x, m, one, one * 0.5, m, two)
    with pytest.raises(ValueError, match="sigma must lie in"):
        compiled(x, m, -one, one, *args[4:])


# ---------------------------------------------------------------------------------------------
# Data-dependent checks outside the ops: made when the graph runs, not when it is traced
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_sample", [True, False])
def test_cfg_combine_with_a_tensor_of_weights_compiles_without_graph_break(gen, per_sample):
    """w as a tensor is a graph input: no read-back at trace time, one graph for every w, the values
    checked when the op runs (eager checks them before it runs)."""
    from torch._dynamo.testing import CompileCounter

    m2 = rand(gen, 4, 3, 4, 4)

    def guided(m2, w):
        return ops.cfg_combine(m2, w, guidance_rescale=0.5)

    def weights(w):
        return torch.tensor([w, w + 1.5] if per_sample else w)

    explanation = _explain(guided, m2, weights(4.0))
    assert _diffrt_targets(explanation.graphs[0]) == ["diffrt.cfg_combine.default"]
    counter = CompileCounter()
    compiled = torch.compile(guided, backend=counter, fullgraph=True)
    for w in (2.0, 4.0, 7.5):
        assert torch.equal(compiled(m2, weights(w)), guided(m2, weights(w)))
    assert counter.frame_count == 1
    for fn in (compiled, guided):
        with pytest.raises(ValueError, match="guidance_scale must be finite"):
            fn(m2, weights(math.inf))
    with pytest.raises(ValueError, match="guidance_scale must be a number or a 1-D tensor of 2 per-sample values"):
        torch.compile(guided, backend="eager")(m2, torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("shared_mask", [True, False])
def test_mask_blend_check_range_compiles_without_graph_break(gen, shared_mask):
    """check_range=True under compile: the custom op checks the range when it runs (ValueError, as eager)."""
    from torch._dynamo.testing import CompileCounter

    a, b = rand(gen, 2, 3, 5, 6), rand(gen, 2, 3, 5, 6)
    mask = torch.rand(1 if shared_mask else 2, 1, 5, 6, generator=gen)

    def blend(mask, a, b):
        return ops.mask_blend(mask, a, b, check_range=True)

    explanation = _explain(blend, mask, a, b)
    assert _diffrt_targets(explanation.graphs[0]) == ["diffrt.mask_blend.default"]
    counter = CompileCounter()
    compiled = torch.compile(blend, backend=counter, fullgraph=True)
    assert torch.equal(compiled(mask, a, b), blend(mask, a, b))
    binary = (mask > 0.5).float()
    assert torch.equal(compiled(binary, a, b), blend(binary, a, b))
    for bad, value in ((1.25, "max 1.25"), (-0.5, "min -0.5"), (math.nan, "nan")):
        wrong = mask.clone()
        wrong[0, 0, 1, 2] = bad
        for fn in (blend, compiled):
            with pytest.raises(ValueError, match=f"mask values must lie in \\[0, 1\\].*{value}"):
                fn(wrong, a, b)
    assert counter.frame_count == 1
    # the check is made once, where it is cheapest: eagerly before the kernel, and the op then skips it
    leaves = [t.clone().requires_grad_() for t in (mask, a, b)]
    want = torch.autograd.grad(blend(*leaves).square().sum(), leaves)
    leaves = [t.clone().requires_grad_() for t in (mask, a, b)]
    got = torch.autograd.grad(torch.compile(blend, backend="aot_eager", fullgraph=True)(*leaves).square().sum(),
                              leaves)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _diffusers_masks(gen, batch, heads, lq, lk):
    """diffusers' prepared masks (batch, heads, 1 or Lq, Lk): key-padding masks (fused kernel) and others (SDPA)."""
    padding = torch.ones(batch, lk, dtype=torch.bool)
    padding[0, lk // 2:] = False
    bias = torch.where(padding, 0.0, -10000.0)[:, None, None].expand(batch, heads, 1, lk)
    return {
        "additive key padding": bias.contiguous(),
        "bool key padding": padding[:, None, None].expand(batch, heads, 1, lk).contiguous(),
        "soft bias": torch.rand(batch, heads, 1, lk, generator=gen),
        "per query": torch.where(torch.rand(batch, heads, lq, lk, generator=gen) < 0.7, 0.0, -10000.0),
        "bool row of all False": torch.zeros(batch, heads, 1, lk, dtype=torch.bool),
    }


class _Attn(torch.nn.Module):
    """The parts of diffusers' Attention the processor's attention step reads."""

    heads, scale = 2, 8**-0.5


@pytest.mark.parametrize("kind", ["additive key padding", "bool key padding", "soft bias", "per query",
                                  "bool row of all False"])
def test_diffusers_processor_mask_detection_compiles_without_graph_break(gen, kind):
    """The kernel-or-SDPA choice of DiffrtAttnProcessor depends on the mask's values: under compile the
    diffusers_attention op makes it when it runs — one node, no break, eager's results and gradients."""
    pytest.importorskip("diffusers")
    from diffrt.integrations.diffusers import DiffrtAttnProcessor

    processor, attn = DiffrtAttnProcessor(), _Attn()
    q, k, v = rand(gen, 2, 2, 5, 8), rand(gen, 2, 2, 7, 8), rand(gen, 2, 2, 7, 8)
    mask = _diffusers_masks(gen, 2, 2, 5, 7)[kind]

    def attend(q, k, v, mask):
        return processor._attend(attn, q, k, v, mask, 2)

    explanation = _explain(attend, q, k, v, mask)
    assert _diffrt_targets(explanation.graphs[0]) == ["diffrt.diffusers_attention.default"]
    want = attend(q, k, v, mask)
    got = torch.compile(attend, backend="aot_eager", fullgraph=True)(q, k, v, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)  # the same kernel on the same inputs
    grads = {}
    for name, fn in (("eager", attend), ("compiled", torch.compile(attend, backend="aot_eager", fullgraph=True))):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        grads[name] = torch.autograd.grad(fn(*leaves, mask).nan_to_num().square().sum(), leaves)
    for g, w in zip(grads["compiled"], grads["eager"]):
        torch.testing.assert_close(g.nan_to_num(), w.nan_to_num(), rtol=0, atol=256 * EPS32 * max(1.0, w.abs().max()))


@pytest.mark.parametrize("kind", ["additive key padding", "soft bias"])
def test_diffusers_attention_ops_pass_opcheck(gen, kind):
    pytest.importorskip("diffusers")
    import diffrt.integrations.diffusers  # noqa: F401 - registers the ops

    q, k, v = (_grad(rand(gen, 2, 2, n, 8)) for n in (5, 7, 7))
    mask = _diffusers_masks(gen, 2, 2, 5, 7)[kind]
    torch.library.opcheck(torch.ops.diffrt.diffusers_attention.default, (q, k, v, mask, 0.3, None))
    dout = rand(gen, 2, 2, 5, 8)
    args = (q.detach(), k.detach(), v.detach(), mask, dout, 0.3, None)
    torch.library.opcheck(torch.ops.diffrt.diffusers_attention_backward.default, args)


@torch.no_grad()
def test_diffusers_unet_with_a_text_mask_compiles_without_graph_breaks(gen):
    """encoder_attention_mask: the cross-attention layers take diffusers' 0 / −10000 bias; one graph, each
    attention one node."""
    unet = _diffusers_unet()
    x, t, text = rand(gen, 2, 4, 8, 8), torch.tensor([10, 500]), rand(gen, 2, 7, 16)
    text_mask = torch.ones(2, 7)
    text_mask[0, 4:] = 0

    def run(x, t, text, text_mask):
        return unet(x, t, encoder_hidden_states=text, encoder_attention_mask=text_mask, return_dict=False)[0]

    explanation = _explain(run, x, t, text, text_mask)
    targets = _diffrt_targets(explanation.graphs[0])
    cross = [name for name in unet.attn_processors if "attn2" in name]
    assert sorted(targets) == sorted(["diffrt.diffusers_attention.default"] * len(cross)
                                     + ["diffrt.attention.default"] * (len(unet.attn_processors) - len(cross)))
    want = run(x, t, text, text_mask)
    _assert_close(torch.compile(run, backend="aot_eager", fullgraph=True)(x, t, text, text_mask), want, want)

    class Run(torch.nn.Module):
        def forward(self, x, t, text, text_mask):
            return run(x, t, text, text_mask)

    exported = torch.export.export(Run(), (x, t, text, text_mask))
    assert sorted(n for n in _export_targets(exported) if n.startswith("diffrt.")) == sorted(targets)
    _assert_close(exported.module()(x, t, text, text_mask), want, want)


# ---------------------------------------------------------------------------------------------
# The drop-in diffusers schedulers: a compiled guided sampling loop
# ---------------------------------------------------------------------------------------------

SCHEDULERS = ["DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "DPMSolverMultistepScheduler"]


def _guided_step(scheduler, name):
    """One step of a guided sampling loop after the model: the [uncond; cond] output and per-sample weights
    in, the scheduler's step out (DDIM fuses the guidance into its step)."""

    def step(batched, t, x, w, noise):
        if name == "DDIMScheduler":
            return scheduler.step(batched, t, x, guidance_scale=w).prev_sample
        guided = ops.cfg_combine(batched, w)
        if name == "EulerAncestralDiscreteScheduler":
            return scheduler.step(guided, t, x, noise=noise).prev_sample
        return scheduler.step(guided, t, x).prev_sample

    return step


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # inside diffusers
@pytest.mark.parametrize("name", SCHEDULERS)
@torch.no_grad()
def test_compiled_guided_sampling_loop_over_the_schedulers_has_no_graph_break(gen, name):
    """fullgraph=True: every step of the loop is one graph (a break would raise), with the eager scheduler's
    results bit for bit. DDIM reads ᾱ with the timestep tensor: one graph serves the whole loop. The σ-space
    schedulers index σ with diffusers' step_index, a Python int: torch.compile specialises on it once, then
    makes it symbolic (it would stay specialised, a graph per step, were the scheduler a global: dynamo takes
    globals' ints as constants — as for diffusers' own schedulers). set_begin_index(0) spares the first step
    diffusers' timestep lookup (see the next test)."""
    pytest.importorskip("diffusers")
    from torch._dynamo.testing import CompileCounter

    from diffrt.integrations import schedulers

    compiled_scheduler, eager_scheduler = (getattr(schedulers, name)() for _ in range(2))
    steps = 10  # more than torch._dynamo's recompile limit (8): with fullgraph=True, a graph per step would fail
    for s in (compiled_scheduler, eager_scheduler):
        s.set_timesteps(steps)
        if name != "DDIMScheduler":
            s.set_begin_index(0)
    counter = CompileCounter()
    compiled = torch.compile(_guided_step(compiled_scheduler, name), backend=counter, fullgraph=True)
    eager = _guided_step(eager_scheduler, name)
    x = rand(gen, 2, 3, 8, 8) * float(eager_scheduler.init_noise_sigma)
    got = want = x
    for t in eager_scheduler.timesteps:
        batched, noise = rand(gen, 4, 3, 8, 8), rand(gen, 2, 3, 8, 8)
        w = torch.rand(2, generator=gen, dtype=torch.float64) * 6 + 1
        got = compiled(batched, t, got, w, noise)
        want = eager(batched, t, want, w, noise)
        assert torch.equal(got, want)
    # DDIM: one graph. σ-space: the first step (step_index None), the second (step_index 1, specialised), then
    # one graph with step_index symbolic for the rest (DPM-Solver: one more where its order changes)
    assert counter.frame_count == 1 if name == "DDIMScheduler" else counter.frame_count <= 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")  # inside diffusers
@pytest.mark.parametrize("name", SCHEDULERS[1:])
@torch.no_grad()
def test_first_scheduler_step_breaks_only_in_diffusers_timestep_lookup(gen, name):
    """Without a begin index, the first step finds its index in diffusers' own code (index_for_timestep:
    nonzero() and .item() of the timestep's position, which no graph can hold): that is the only break,
    once per run, as with diffusers' schedulers; the steps after it have none."""
    pytest.importorskip("diffusers")
    from diffrt.integrations import schedulers

    scheduler = getattr(schedulers, name)()
    scheduler.set_timesteps(4)
    step = _guided_step(scheduler, name)
    w = torch.tensor([3.0, 5.0], dtype=torch.float64)
    x = rand(gen, 2, 3, 8, 8)
    args = (rand(gen, 4, 3, 8, 8), scheduler.timesteps[0], x, w, rand(gen, 2, 3, 8, 8))
    explanation = torch._dynamo.explain(step)(*args)
    # (explain counts the break once per frame it unwinds, so the count depends on the nesting: the pin is where)
    assert explanation.graph_break_count >= 1
    for reason in explanation.break_reasons:
        assert reason.user_stack[-1].name == "index_for_timestep", reason
    assert scheduler.step_index == 1
    _explain(step, rand(gen, 4, 3, 8, 8), scheduler.timesteps[1], x, w, rand(gen, 2, 3, 8, 8))
