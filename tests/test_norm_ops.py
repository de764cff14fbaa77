"""group_norm (+ SiLU), layer_norm, geglu, timestep_embedding and timestep_mlp against their float64 references,
torch's own ops and diffusers' modules, on every CPU kernel table this machine runs."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffrt import _C, ops
from tests._helpers import assert_close_to_ref, rand
from tests.test_cuda_ops import needs_gpu

DTYPES = [torch.float32, torch.bfloat16]
# (shape, groups): groups of one channel and of all channels, odd sizes, 3-D input, and one above the
# parallel threshold (several tiles per group).
GROUP_CASES = [((2, 12, 9, 11), 4), ((1, 7, 5, 3), 7), ((3, 6, 13, 7), 1), ((2, 6, 1, 1), 3),
               ((2, 64, 33, 31), 32), ((2, 10, 37), 5)]


def _norm_scale(x, weight, bias, dims):
    """Magnitude of the float32 intermediate terms: |γ|·(|x| + |μ|)/σ + |β| (also for a large mean)."""
    v = x.double()
    std = v.std(dim=dims, unbiased=False).min().item()
    w = 1.0 if weight is None else weight.double().abs().max().item()
    b = 0.0 if bias is None else bias.double().abs().max().item()
    return w * 2 * v.abs().max().item() / max(std, 1e-30) + b + 1.0


def _group_scale(x, groups, weight, bias):
    return _norm_scale(x.reshape(x.shape[0], groups, -1), weight, bias, (-1,))


def _layout(x, channels_last):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# channels-last is a 4-D layout
LAYOUT_CASES = [(shape, groups, cl) for shape, groups in GROUP_CASES for cl in (False, True) if len(shape) == 4 or not cl]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, groups, channels_last", LAYOUT_CASES,
                         ids=[f"{'x'.join(map(str, s))}g{g}{'-nhwc' if cl else ''}" for s, g, cl in LAYOUT_CASES])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_group_norm_matches_reference(isa, gen, dtype, shape, groups, channels_last, activation):
    c = shape[1]
    x = _layout(rand(gen, *shape, dtype=dtype, scale=2.0), channels_last)
    weight, bias = rand(gen, c), rand(gen, c)
    out = ops.group_norm(x, groups, weight, bias, 1e-5, activation=activation)
    ref = ops.group_norm_ref(x.double(), groups, weight.double(), bias.double(), 1e-5, activation=activation)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_to_ref(out, ref, dtype=dtype, scale=_group_scale(x, groups, weight, bias))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [1e3, -3e4])
def test_group_norm_is_stable_for_large_means(isa, gen, dtype, channels_last, offset):
    """Raw Σx, Σx² would lose every digit of σ² here (|μ|/σ up to 3·10⁴); the result must stay within the
    float32 error of its intermediate terms."""
    x = _layout((rand(gen, 2, 16, 23, 19, dtype=torch.float64) + offset).to(dtype), channels_last)
    weight, bias = rand(gen, 16), rand(gen, 16)
    out = ops.group_norm(x, 4, weight, bias, activation="silu")
    ref = ops.group_norm_ref(x.double(), 4, weight.double(), bias.double(), activation="silu")
    assert_close_to_ref(out, ref, dtype=dtype, scale=_group_scale(x, 4, weight, bias))


def test_group_norm_without_affine(isa, gen):
    x = rand(gen, 2, 8, 5, 7)
    assert_close_to_ref(ops.group_norm(x, 2), ops.group_norm_ref(x.double(), 2), dtype=torch.float32,
                        scale=_group_scale(x, 2, None, None))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_matches_torch(isa, gen, dtype, channels_last):
    """F.group_norm + F.silu (what diffusers' ResnetBlock2D runs): as close to the float64 truth as torch is."""
    x = _layout(rand(gen, 2, 32, 16, 16, dtype=dtype), channels_last)
    weight, bias = rand(gen, 32, dtype=dtype), rand(gen, 32, dtype=dtype)
    ours = ops.group_norm(x, 8, weight, bias, 1e-6, activation="silu")
    theirs = F.silu(F.group_norm(x, 8, weight, bias, 1e-6))
    truth = ops.group_norm_ref(x.double(), 8, weight.double(), bias.double(), 1e-6, activation="silu")
    torch_error = (theirs.double() - truth).abs().max().item()
    assert_close_to_ref(ours, theirs, dtype=dtype, scale=_group_scale(x, 8, weight, bias), slack=torch_error)


def test_group_norm_matches_torch_group_norm_module(isa, gen):
    module = torch.nn.GroupNorm(4, 12, eps=1e-5)
    with torch.no_grad():
        module.weight.copy_(rand(gen, 12))
        module.bias.copy_(rand(gen, 12))
    x = rand(gen, 3, 12, 10, 6)
    with torch.no_grad():
        theirs = module(x)
    ours = ops.group_norm(x, 4, module.weight.detach(), module.bias.detach(), module.eps)
    truth = ops.group_norm_ref(x.double(), 4, module.weight.double(), module.bias.double(), 1e-5)
    assert_close_to_ref(ours, theirs, dtype=torch.float32, scale=_group_scale(x, 4, module.weight, module.bias),
                        slack=(theirs.double() - truth).abs().max().item())


# ---- layer_norm ---------------------------------------------------------------------------------------------

LAYER_SHAPES = [(2, 77, 320), (5, 1), (3, 7, 33), (1, 1000), (4, 4, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("offset", [0.0, 5e3])
def test_layer_norm_matches_reference(isa, gen, dtype, shape, affine, offset):
    x = (rand(gen, *shape, dtype=torch.float64) * 3 + offset).to(dtype)
    d = shape[-1]
    weight, bias = (rand(gen, d), rand(gen, d)) if affine else (None, None)
    out = ops.layer_norm(x, weight, bias, 1e-5)
    ref = ops.layer_norm_ref(x.double(), None if weight is None else weight.double(),
                             None if bias is None else bias.double(), 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close_to_ref(out, ref, dtype=dtype, scale=_norm_scale(x, weight, bias, (-1,)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_torch(isa, gen, dtype):
    x = rand(gen, 2, 64, 320, dtype=dtype)
    weight, bias = rand(gen, 320, dtype=dtype), rand(gen, 320, dtype=dtype)
    ours = ops.layer_norm(x.transpose(0, 1), weight, bias, 1e-5)  # a non-contiguous input is read through a copy
    theirs = F.layer_norm(x.transpose(0, 1), (320,), weight, bias, 1e-5)
    truth = ops.layer_norm_ref(x.transpose(0, 1).double(), weight.double(), bias.double(), 1e-5)
    assert_close_to_ref(ours, theirs, dtype=dtype, scale=_norm_scale(x, weight, bias, (-1,)),
                        slack=(theirs.double() - truth).abs().max().item())


# ---- geglu --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 17, 80), (3, 666), (1, 2), (2, 64, 1024)], ids=lambda s: "x".join(map(str, s)))
def test_geglu_matches_reference(isa, gen, dtype, shape):
    x = rand(gen, *shape, dtype=dtype, scale=3.0)  # gates out to ±12: both erf tails
    out = ops.geglu(x)
    ref = ops.geglu_ref(x.double())
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    a, g = x.double().chunk(2, dim=-1)
    assert_close_to_ref(out, ref, dtype=dtype, scale=(a.abs() * g.abs().clamp(min=1)).max().item())


@pytest.mark.parametrize("dtype", DTYPES)
def test_geglu_matches_diffusers_module(isa, gen, dtype):
    """diffusers' GEGLU = proj, then hidden·gelu(gate) of proj's output halves (hidden first)."""
    activations = pytest.importorskip("diffusers.models.activations")
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=gen)))
    module = activations.GEGLU(48, 40).to(dtype)
    x = rand(gen, 2, 9, 48, dtype=dtype)
    with torch.no_grad():
        projected = module.proj(x)
        theirs = module(x)
    ours = ops.geglu(projected)
    truth = ops.geglu_ref(projected.double())
    a, g = projected.double().chunk(2, dim=-1)
    assert_close_to_ref(ours, theirs, dtype=dtype, scale=(a.abs() * g.abs().clamp(min=1)).max().item(),
                        slack=(theirs.double() - truth).abs().max().item())


# ---- every op: threads, empty inputs, autograd, validation --------------------------------------------------


def test_results_do_not_depend_on_the_thread_count(isa, gen):
    x = rand(gen, 2, 32, 48, 48, scale=3.0) + 7
    w, b = rand(gen, 32), rand(gen, 32)
    h = rand(gen, 2, 300, 320) + 3
    calls = [lambda: ops.group_norm(x, 8, w, b, activation="silu"),
             lambda: ops.group_norm(x.contiguous(memory_format=torch.channels_last), 8, w, b),
             lambda: ops.layer_norm(h, w.repeat(10), b.repeat(10)),
             lambda: ops.geglu(h.reshape(2, 300, 320))]
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append([f() for f in calls])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 5), (2, 0, 3, 3)], ids=lambda s: "x".join(map(str, s)))
def test_group_norm_on_empty_tensors(isa, dtype, shape):
    x = torch.randn(shape).to(dtype)
    groups = 2 if shape[1] else 1
    weight = torch.randn(shape[1])
    out = ops.group_norm(x, groups, weight, weight, activation="silu")
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, F.silu(F.group_norm(x, groups, weight.to(dtype), weight.to(dtype))))


@pytest.mark.parametrize("shape", [(0, 6), (3, 0), (2, 0, 6)], ids=lambda s: "x".join(map(str, s)))
def test_layer_norm_and_geglu_on_empty_tensors(isa, shape):
    x = torch.randn(shape)
    assert torch.equal(ops.layer_norm(x), F.layer_norm(x, x.shape[-1:]))
    assert ops.geglu(x).shape == (*shape[:-1], shape[-1] // 2)


def test_gradients_are_the_references(gen):
    x = rand(gen, 2, 6, 5, 4).requires_grad_()
    w, b = rand(gen, 6).requires_grad_(), rand(gen, 6).requires_grad_()
    grad = rand(gen, 2, 6, 5, 4)
    got = torch.autograd.grad(ops.group_norm(x, 3, w, b, activation="silu"), (x, w, b), grad)
    want = torch.autograd.grad(F.silu(F.group_norm(x, 3, w, b)), (x, w, b), grad)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    h = rand(gen, 3, 10).requires_grad_()
    got = torch.autograd.grad(ops.geglu(h), h, torch.ones(3, 5))[0]
    want = torch.autograd.grad(ops.geglu_ref(h), h, torch.ones(3, 5))[0]
    torch.testing.assert_close(got, want)
    got = torch.autograd.grad(ops.layer_norm(h, w.detach().repeat(2)[:10]).sum(), h)[0]
    want = torch.autograd.grad(F.layer_norm(h, (10,), w.detach().repeat(2)[:10]).sum(), h)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_float64_runs_on_the_reference_and_cpu_refuses_it():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ops.group_norm(x, 2), F.group_norm(x, 2))
    with pytest.raises(ops.UnsupportedBackendError, match="dtype float64 is not supported"):
        ops.group_norm(x, 2, backend="cpu")


@pytest.mark.parametrize("call, error, match", [
    (lambda x: ops.group_norm(x, 5), ValueError, r"num_groups must be >= 1 and divide the 12 channels of x, got 5"),
    (lambda x: ops.group_norm(x, 0), ValueError, r"num_groups must be >= 1"),
    (lambda x: ops.group_norm(x, True), TypeError, r"num_groups must be an int"),
    (lambda x: ops.group_norm(x, 4, torch.ones(11)), ValueError, r"weight must have shape \(12,\)"),
    (lambda x: ops.group_norm(x, 4, None, torch.ones(12, 1)), ValueError, r"bias must have 1 dimensions"),
    (lambda x: ops.group_norm(x, 4, eps=-1e-5), ValueError, r"eps must be >= 0"),
    (lambda x: ops.group_norm(x, 4, eps=math.nan), ValueError, r"eps must be finite"),
    (lambda x: ops.group_norm(x, 4, activation="gelu"), ValueError, r"activation must be None or 'silu', got 'gelu'"),
    (lambda x: ops.group_norm(x.long(), 4), TypeError, r"x must be a floating-point tensor"),
    (lambda x: ops.group_norm(x[0, 0, 0], 1), ValueError, r"x must have shape \(N, C, \*\)"),
    (lambda x: ops.layer_norm(x, torch.ones(12)), ValueError, r"weight must have shape \(5,\)"),
    (lambda x: ops.layer_norm(x, eps=float("inf")), ValueError, r"eps must be finite"),
    (lambda x: ops.geglu(x), ValueError, r"x must have an even last dim"),
    (lambda x: ops.geglu(x.int()), TypeError, r"x must be a floating-point tensor"),
])
def test_validation_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 12, 4, 5))


def test_the_kernel_refuses_groups_that_do_not_divide_the_channels():
    x = torch.zeros(1, 6, 2)
    args = _C.GroupNormArgs(dtype=_C.DType.float32, batch=1, channels=6, spatial=2, groups=4, channels_last=False,
                            x=x.data_ptr(), out=x.data_ptr(), eps=1e-5, silu=False)
    with pytest.raises(ValueError, match=r"GroupNormArgs\.groups must be >= 1 and divide channels \(6\), got 4"):
        _C.group_norm(args, 1)


# ---- timestep_embedding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim, flip, shift", [(320, True, 0.0), (321, False, 1.0), (1, False, 1.0), (2, True, 0.5),
                                              (128, False, 1.0)])
def test_timestep_embedding_matches_reference(isa, gen, dtype, dim, flip, shift):
    t = torch.cat([torch.tensor([0.0, 999.0, 1.5]), torch.rand(4, generator=gen, dtype=torch.float64) * 1000])
    out = ops.timestep_embedding(t, dim, flip, shift, dtype=dtype)
    ref = ops.timestep_embedding_ref(t, dim, flip, shift, dtype=torch.float64)
    assert out.shape == (7, dim) and out.dtype == dtype
    assert_close_to_ref(out, ref, dtype=dtype, scale=1.0)


@pytest.mark.parametrize("dim, flip, shift, scale", [(320, True, 0.0, 1.0), (257, False, 1.0, 1000.0)])
def test_timestep_embedding_matches_diffusers(isa, gen, dim, flip, shift, scale):
    """diffusers computes the phases in float32: ours is at least as close to the float64 truth."""
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.randint(0, 1000, (5,), generator=gen)
    theirs = embeddings.get_timestep_embedding(t, dim, flip, shift, scale)
    ours = ops.timestep_embedding(t, dim, flip, shift, scale)
    truth = ops.timestep_embedding_ref(t, dim, flip, shift, scale, dtype=torch.float64)
    assert_close_to_ref(ours, theirs, dtype=torch.float32, scale=1.0,
                        slack=(theirs.double() - truth).abs().max().item())
    assert (ours.double() - truth).abs().max() <= (theirs.double() - truth).abs().max() + 1e-7


def test_timestep_embedding_on_an_empty_batch(isa):
    assert ops.timestep_embedding(torch.zeros(0), 8).shape == (0, 8)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.timestep_embedding(torch.zeros(2, 1), 8), ValueError, r"timesteps must be a 1-D tensor"),
    (lambda: ops.timestep_embedding([1.0], 8), TypeError, r"timesteps must be a torch.Tensor"),
    (lambda: ops.timestep_embedding(torch.zeros(2), 0), ValueError, r"dim must be an int >= 1, got 0"),
    (lambda: ops.timestep_embedding(torch.zeros(2), 2, False, 1.0), ValueError, r"downscale_freq_shift must differ"),
    (lambda: ops.timestep_embedding(torch.zeros(2), 8, 1), TypeError, r"flip_sin_to_cos must be a bool"),
    (lambda: ops.timestep_embedding(torch.zeros(2), 8, max_period=0.0), ValueError, r"max_period must be > 0"),
    (lambda: ops.timestep_embedding(torch.zeros(2), 8, scale=math.inf), ValueError, r"scale must be finite"),
    (lambda: ops.timestep_embedding(torch.zeros(2, requires_grad=True), 8), ValueError, r"timesteps has no gradient"),
])
def test_timestep_embedding_validation_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- timestep_mlp -------------------------------------------------------------------------------------------

MLP_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _mlp_weights(gen, in_dim, hidden_dim, out_dim, dtype, biases=True):
    """nn.Linear-sized weights (std 1/√fan_in) and biases rounded to dtype, as (w1, b1, w2, b2)."""
    w1 = rand(gen, hidden_dim, in_dim, dtype=dtype, scale=in_dim ** -0.5)
    w2 = rand(gen, out_dim, hidden_dim, dtype=dtype, scale=hidden_dim ** -0.5)
    b1 = rand(gen, hidden_dim, dtype=dtype, scale=0.5) if biases else None
    b2 = rand(gen, out_dim, dtype=dtype, scale=0.5) if biases else None
    return w1, b1, w2, b2


def _double(*tensors):
    return [None if t is None else t.double() for t in tensors]


def _mlp_scale(t, w1, b1, w2, b2, **sinusoid):
    """The largest out-element of the chain on absolute values, |W2|·(|W1|·|e| + |b1|) + |b2|: it bounds the
    float32 rounding of both layers' sums (an error in h reaches out through |W2|; SiLU's slope is ≤ 1.1)."""
    e = ops.timestep_embedding_ref(t, w1.shape[1], dtype=torch.float64, **sinusoid).abs()
    h = e @ w1.double().abs().T + (0 if b1 is None else b1.double().abs())
    return (h @ w2.double().abs().T + (0 if b2 is None else b2.double().abs())).max().item()


@pytest.mark.parametrize("dtype", MLP_DTYPES)
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("dims", [(32, 128, 128), (320, 1280, 1280), (33, 67, 21)], ids=lambda d: "x".join(map(str, d)))
def test_timestep_mlp_matches_reference(isa, gen, dtype, batch, dims):
    t = torch.rand(batch, generator=gen, dtype=torch.float64) * 1000
    w1, b1, w2, b2 = _mlp_weights(gen, *dims, dtype)
    sinusoid = dict(flip_sin_to_cos=batch != 2, downscale_freq_shift=0.0 if batch == 2 else 1.0)
    out = ops.timestep_mlp(t, w1, b1, w2, b2, **sinusoid)
    ref = ops.timestep_mlp_ref(t, *_double(w1, b1, w2, b2), **sinusoid)
    assert out.shape == (batch, dims[2]) and out.dtype == dtype
    assert_close_to_ref(out, ref, dtype=dtype, scale=_mlp_scale(t, w1, b1, w2, b2, **sinusoid))


@pytest.mark.parametrize("dtype", MLP_DTYPES)
def test_timestep_mlp_without_biases_and_with_every_sinusoid_option(isa, gen, dtype):
    t = torch.tensor([0.0, 999.0, 1.5])
    w1, _, w2, _ = _mlp_weights(gen, 9, 40, 17, dtype, biases=False)  # odd in_dim: the zero column
    _, b1, _, b2 = _mlp_weights(gen, 9, 40, 17, dtype)
    sinusoid = dict(flip_sin_to_cos=True, downscale_freq_shift=0.5, scale=3.0, max_period=500.0)
    for biases in [(None, None), (b1, None), (None, b2)]:
        out = ops.timestep_mlp(t, w1, biases[0], w2, biases[1], **sinusoid)
        ref = ops.timestep_mlp_ref(t, *_double(w1, biases[0], w2, biases[1]), **sinusoid)
        assert_close_to_ref(out, ref, dtype=dtype, scale=_mlp_scale(t, w1, biases[0], w2, biases[1], **sinusoid))


def test_timestep_mlp_matches_diffusers_modules(isa, gen):
    """diffusers' Timesteps + TimestepEmbedding (float32 phases, rounded e and h): ours is as close to the float64
    truth, up to float32 arithmetic."""
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    proj = embeddings.Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)
    mlp = embeddings.TimestepEmbedding(320, 1280)
    t = torch.randint(0, 1000, (2,), generator=gen)
    with torch.no_grad():
        theirs = mlp(proj(t))
    lin1, lin2 = mlp.linear_1, mlp.linear_2
    args = (lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    sinusoid = dict(flip_sin_to_cos=proj.flip_sin_to_cos, downscale_freq_shift=proj.downscale_freq_shift,
                    scale=proj.scale)
    with torch.no_grad():
        ours = ops.timestep_mlp(t, *args, **sinusoid)
    truth = ops.timestep_mlp_ref(t, *_double(*args), **sinusoid)
    scale = _mlp_scale(t, *[a.detach() for a in args], **sinusoid)
    their_err = (theirs.double() - truth).abs().max().item()
    assert_close_to_ref(ours, truth, dtype=torch.float32, scale=scale)
    assert_close_to_ref(ours, theirs, dtype=torch.float32, scale=scale, slack=their_err)


def test_timestep_mlp_weight_gradients_are_the_references(gen):
    t = torch.tensor([10.0, 500.0])
    w1, b1, w2, b2 = (p.requires_grad_() for p in _mlp_weights(gen, 16, 24, 8, torch.float32))
    out = ops.timestep_mlp(t, w1, b1, w2, b2, flip_sin_to_cos=True)
    grad = rand(gen, *out.shape)
    got = torch.autograd.grad(out, (w1, b1, w2, b2), grad)
    leaves = [p.detach().double().requires_grad_() for p in (w1, b1, w2, b2)]
    want = torch.autograd.grad(ops.timestep_mlp_ref(t, *leaves, flip_sin_to_cos=True), leaves, grad.double())
    for g, w in zip(got, want):
        assert_close_to_ref(g, w, dtype=torch.float32, scale=w.abs().max().item() + 1.0)


def test_timestep_mlp_on_an_empty_batch(isa, gen):
    w1, b1, w2, b2 = _mlp_weights(gen, 8, 16, 4, torch.float32)
    assert ops.timestep_mlp(torch.zeros(0), w1, b1, w2, b2).shape == (0, 4)


def _mlp_call(t=None, w1=None, b1=None, w2=None, b2=None, **kwargs):
    gen = torch.Generator().manual_seed(0)
    d1, d2, d3, d4 = _mlp_weights(gen, 8, 16, 4, torch.float32)
    return lambda: ops.timestep_mlp(torch.zeros(2) if t is None else t, d1 if w1 is None else w1,
                                    d2 if b1 is None else b1, d3 if w2 is None else w2, d4 if b2 is None else b2,
                                    **kwargs)


@pytest.mark.parametrize("call, error, match", [
    (_mlp_call(t=torch.zeros(2, 1)), ValueError, r"timesteps must be a 1-D tensor"),
    (_mlp_call(t=torch.zeros(2, requires_grad=True)), ValueError,
     r"timesteps has no gradient in diffrt.ops.timestep_mlp"),
    (_mlp_call(w1=torch.zeros(16)), ValueError, r"weight_1 must have 2 dimensions"),
    (_mlp_call(w1=torch.zeros(16, 8, dtype=torch.int32)), TypeError, r"weight_1 must be a floating-point tensor"),
    (_mlp_call(w1=torch.zeros(0, 8)), ValueError, r"weight_1 and weight_2 must be non-empty"),
    (_mlp_call(w2=torch.zeros(4, 15)), ValueError, r"weight_2 must have shape \(out_dim, 16\)"),
    (_mlp_call(w2=torch.zeros(4, 16, dtype=torch.bfloat16)), TypeError, r"weight_2 has dtype torch.bfloat16"),
    (_mlp_call(b1=torch.zeros(15)), ValueError, r"bias_1 must have shape \(16,\)"),
    (_mlp_call(b2=torch.zeros(4, 1)), ValueError, r"bias_2 must have 1 dimensions"),
    (_mlp_call(b2=torch.zeros(4, dtype=torch.float64)), TypeError, r"bias_2 has dtype torch.float64"),
    (_mlp_call(t=torch.zeros(2, device="meta")), ValueError, r"timesteps is on meta but weight_1 is on cpu"),
    (_mlp_call(downscale_freq_shift=4.0), ValueError, r"downscale_freq_shift must differ from dim // 2 = 4"),
    (_mlp_call(flip_sin_to_cos=1), TypeError, r"flip_sin_to_cos must be a bool"),
    (_mlp_call(max_period=-1.0), ValueError, r"max_period must be > 0"),
    (_mlp_call(scale=math.nan), ValueError, r"scale must be finite"),
    (_mlp_call(backend="cuda"), ops.UnsupportedBackendError, r"timestep_mlp: backend 'cuda' cannot run"),
])
def test_timestep_mlp_validation_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_timestep_mlp_args_refuse_empty_dims():
    args = _C.TimestepMlpArgs(dtype=_C.DType.float32, batch=1, in_dim=4, hidden_dim=0, out_dim=3, timesteps=8,
                              weight_1=8, weight_2=8, out=8, flip_sin_to_cos=False, downscale_freq_shift=1.0,
                              scale=1.0, max_period=1e4)
    with pytest.raises(ValueError, match=r"TimestepMlpArgs.in_dim, hidden_dim and out_dim must be >= 1, got 4, 0, 3"):
        _C.timestep_mlp(args, 1)


# ---- on a GPU (skipped without one; tests/cuda_sim/sim_norm.cpp runs the same kernels on the host) ----------


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_cuda_group_norm_matches_reference(gen, dtype, channels_last, activation):
    x = _layout(rand(gen, 2, 64, 33, 31, dtype=dtype, scale=2.0) + 5, channels_last)
    weight, bias = rand(gen, 64), rand(gen, 64)
    out = ops.group_norm(x.cuda(), 32, weight.cuda(), bias.cuda(), activation=activation, backend="cuda")
    ref = ops.group_norm_ref(x.double(), 32, weight.double(), bias.double(), activation=activation)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_group_scale(x, 32, weight, bias))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_layer_norm_geglu_and_timestep_embedding_match_references(gen, dtype):
    h = rand(gen, 2, 77, 320, dtype=dtype)
    w, b = rand(gen, 320), rand(gen, 320)
    out = ops.layer_norm(h.cuda(), w.cuda(), b.cuda(), backend="cuda")
    assert_close_to_ref(out.cpu(), ops.layer_norm_ref(h.double(), w.double(), b.double()), dtype=dtype,
                        scale=_norm_scale(h, w, b, (-1,)))
    x = rand(gen, 2, 77, 640, dtype=dtype, scale=3.0)
    a, g = x.double().chunk(2, dim=-1)
    assert_close_to_ref(ops.geglu(x.cuda(), backend="cuda").cpu(), ops.geglu_ref(x.double()), dtype=dtype,
                        scale=(a.abs() * g.abs().clamp(min=1)).max().item())
    t = torch.tensor([0.0, 17.5, 999.0])
    emb = ops.timestep_embedding(t.cuda(), 321, True, 0.0, dtype=dtype, backend="cuda")
    assert_close_to_ref(emb.cpu(), ops.timestep_embedding_ref(t, 321, True, 0.0, dtype=torch.float64), dtype=dtype,
                        scale=1.0)


@needs_gpu
@pytest.mark.parametrize("dtype", MLP_DTYPES)
def test_cuda_timestep_mlp_matches_reference(gen, dtype):
    t = torch.tensor([0.0, 17.5, 999.0])
    w1, b1, w2, b2 = _mlp_weights(gen, 320, 1280, 1280, dtype)
    out = ops.timestep_mlp(t.cuda(), w1.cuda(), b1.cuda(), w2.cuda(), b2.cuda(), flip_sin_to_cos=True, backend="cuda")
    ref = ops.timestep_mlp_ref(t, *_double(w1, b1, w2, b2), flip_sin_to_cos=True)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_mlp_scale(t, w1, b1, w2, b2, flip_sin_to_cos=True))
