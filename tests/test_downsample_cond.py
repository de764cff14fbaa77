"""downsample_cond (Imagen Editor's image+mask conditioning conv) against its float64 reference,
its autograd against torch's, its validation, and the DownsampleCond module."""

import math

import pytest
import torch

from diffrt import ops
from diffrt.models import DownsampleCond
from diffrt.ops import _backend
from tests._helpers import assert_close_to_ref, rand

DTYPES = [torch.float32, torch.bfloat16]

# (N, image channels, H, W, k, s, p, C, channels of out, channel offset)
CASES = [
    (2, 3, 64, 64, 16, 16, 0, 64, 68, 4),  # 1024 → 64 in miniature: k = s, C = 64
    (1, 3, 33, 47, 4, 4, 0, 20, 24, 3),  # k = s, sizes not multiples of s (last rows/columns dropped)
    (3, 3, 37, 29, 5, 3, 2, 7, 12, 5),  # k > s with padding, odd everything
    (2, 3, 31, 30, 3, 1, 1, 50, 50, 0),  # stride 1, C not a multiple of the vector width
    (1, 2, 20, 26, 6, 2, 0, 17, 40, 11),  # two image channels
    (1, 3, 32, 32, 4, 4, 0, 130, 134, 4),  # several channel blocks
    # Wide rows: float32 micro-tiles inside the image read it in place, border and tail tiles are packed.
    (1, 3, 32, 520, 16, 16, 0, 64, 70, 6),
    (2, 3, 9, 203, 4, 4, 1, 16, 20, 2),
]
IDS = ["k16s16", "k4s4-odd", "k5s3p2", "k3s1p1", "k6s2-2ch", "C130", "k16-wide", "k4p1-wide"]


def _inputs(gen, n, ci, h, w, k, c, dtype, mask_batch=None):
    image = rand(gen, n, ci, h, w, dtype=dtype)
    mask = (torch.rand(mask_batch or n, 1, h, w, generator=gen) > 0.5).to(dtype)
    weight = rand(gen, c, ci + 1, k, k, dtype=dtype, scale=1 / k)
    bias = rand(gen, c, dtype=dtype)
    return image, mask, weight, bias


def _reference(image, mask, weight, bias, stride, padding):
    """The float64 truth, and the scale Σ|w|·|x| + |b| of the terms each output sums (for the tolerance)."""
    args = dict(stride=stride, padding=padding)
    ref = ops.downsample_cond_ref(image.double(), mask.double(), weight.double(), bias.double(), **args)
    scale = ops.downsample_cond_ref(image.double().abs(), mask.double().abs(), weight.double().abs(),
                                    bias.double().abs(), **args).max().item()
    return ref, scale


def _poisoned(shape, dtype):
    return torch.full(shape, math.nan, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_writes_conv_into_channel_slice(isa, gen, dtype, case):
    n, ci, h, w, k, s, p, c, c_total, offset = case
    image, mask, weight, bias = _inputs(gen, n, ci, h, w, k, c, dtype)
    ref, scale = _reference(image, mask, weight, bias, s, p)
    out = _poisoned((n, c_total, *ref.shape[2:]), dtype)
    result = ops.downsample_cond(image, mask, weight, bias, stride=s, padding=p, out=out, channel_offset=offset)
    assert result is out
    assert_close_to_ref(out[:, offset:offset + c], ref, dtype=dtype, scale=scale)
    # Every other channel of the buffer (x_t's) is untouched.
    assert out[:, :offset].isnan().all() and out[:, offset + c:].isnan().all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_without_out_returns_new_tensor(isa, gen, dtype, case):
    n, ci, h, w, k, s, p, c, _, _ = case
    image, mask, weight, bias = _inputs(gen, n, ci, h, w, k, c, dtype)
    ref, scale = _reference(image, mask, weight, bias, s, p)
    out = ops.downsample_cond(image, mask, weight, bias, stride=s, padding=p)
    assert out.shape == ref.shape and out.dtype == dtype
    assert_close_to_ref(out, ref, dtype=dtype, scale=scale)


def test_one_mask_for_the_batch_no_bias_non_contiguous_inputs(isa, gen):
    image = rand(gen, 3, 40, 36, 3).permute(0, 3, 1, 2)  # channels-last storage
    mask = torch.rand(1, 1, 40, 36, generator=gen)
    weight = rand(gen, 9, 6, 4, 4).transpose(0, 1)[:4].transpose(0, 1)  # a strided view
    ref, scale = _reference(image, mask, weight, torch.zeros(9), 4, 0)
    out = ops.downsample_cond(image, mask, weight, None, stride=4)
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=scale)


def test_out_without_dense_planes_is_written_through_a_copy(isa, gen):
    image, mask, weight, bias = _inputs(gen, 2, 3, 32, 32, 4, 8, torch.float32)
    ref, scale = _reference(image, mask, weight, bias, 4, 0)
    out = _poisoned((2, 12, 8, 8), torch.float32).contiguous(memory_format=torch.channels_last)
    ops.downsample_cond(image, mask, weight, bias, stride=4, out=out, channel_offset=2)
    assert_close_to_ref(out[:, 2:10], ref, dtype=torch.float32, scale=scale)
    assert out[:, :2].isnan().all() and out[:, 10:].isnan().all()


def test_bool_mask_and_float64_run_on_the_reference(gen):
    image, mask, weight, bias = _inputs(gen, 1, 3, 16, 16, 4, 5, torch.float64)
    out = ops.downsample_cond(image, mask > 0.5, weight, bias, stride=4)
    torch.testing.assert_close(out, ops.downsample_cond_ref(image, mask, weight, bias, stride=4), rtol=0, atol=0)


def test_matches_torch_conv2d_and_cat(isa, gen):
    """What it replaces: torch.cat([x_t, conv2d(torch.cat([image, mask]))])."""
    image, mask, weight, bias = _inputs(gen, 2, 3, 64, 64, 8, 16, torch.float32)
    x_t = rand(gen, 2, 4, 8, 8)
    want = torch.cat([x_t, torch.conv2d(torch.cat([image, mask], 1), weight, bias, stride=8)], 1)
    buf = torch.empty(2, 20, 8, 8)
    buf[:, :4] = x_t
    ops.downsample_cond(image, mask, weight, bias, stride=8, out=buf, channel_offset=4)
    torch.testing.assert_close(buf, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_batch", [None, 1], ids=["mask-per-sample", "mask-shared"])
def test_gradcheck_float64(gen, mask_batch):
    image, mask, weight, bias = _inputs(gen, 2, 3, 9, 11, 3, 4, torch.float64, mask_batch=mask_batch)
    args = [t.requires_grad_() for t in (image, mask, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda i, m, w, b: ops.downsample_cond(i, m, w, b, stride=2, padding=1), args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_kernel_gradients_match_torch(isa, gen, dtype):
    image, mask, weight, bias = _inputs(gen, 2, 3, 21, 19, 5, 6, dtype)
    grad_out = rand(gen, 2, 6, 7, 7, dtype=dtype)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (image, mask, weight, bias)]
        fn(*leaves).backward(grad_out)
        return [t.grad for t in leaves]

    got = grads(lambda i, m, w, b: ops.downsample_cond(i, m, w, b, stride=3, padding=2, backend="cpu"))
    want = grads(lambda i, m, w, b: torch.conv2d(torch.cat([i, m], 1), w, b, stride=3, padding=2))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g, w_, **tol)


def test_gradients_through_out_buffer(isa, gen):
    """Writing into [x_t | cond]: the loss on the buffer reaches x_t, the conv's weights and its inputs."""
    image, mask, weight, bias = _inputs(gen, 2, 3, 32, 32, 4, 6, torch.float32)
    x_t = rand(gen, 2, 4, 8, 8)
    target = rand(gen, 2, 10, 8, 8)

    def grads(use_out):
        leaves = [t.detach().clone().requires_grad_() for t in (x_t, image, weight, bias)]
        xt, img, wt, b = leaves
        if use_out:
            buf = torch.empty(2, 10, 8, 8)
            buf[:, :4] = xt
            unet_in = ops.downsample_cond(img, mask, wt, b, stride=4, out=buf, channel_offset=4)
        else:
            unet_in = torch.cat([xt, torch.conv2d(torch.cat([img, mask], 1), wt, b, stride=4)], 1)
        ((unet_in * target).sum()).backward()
        return [t.grad for t in leaves]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_out_in_a_graph_with_frozen_conv(isa, gen):
    """Frozen conv weights, but x_t in the buffer requires grad: the write goes through autograd."""
    image, mask, weight, bias = _inputs(gen, 1, 3, 16, 16, 4, 3, torch.float32)
    x_t = rand(gen, 1, 4, 4, 4).requires_grad_()
    buf = torch.empty(1, 7, 4, 4)
    buf[:, :4] = x_t
    ops.downsample_cond(image, mask, weight, bias, stride=4, out=buf, channel_offset=4)
    (buf * 2).sum().backward()
    torch.testing.assert_close(x_t.grad, torch.full_like(x_t, 2.0))
    torch.testing.assert_close(buf[:, 4:].detach(), ops.downsample_cond_ref(image, mask, weight, bias, stride=4),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

IMG, MASK, W, B = torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16), torch.zeros(5, 4, 4, 4), torch.zeros(5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(image=torch.zeros(3, 16, 16)), ValueError, "image must have 4 dimensions"),
    (dict(image=IMG.long()), TypeError, "image must be a floating-point"),
    (dict(mask=torch.zeros(3, 1, 16, 16)), ValueError, "mask must have shape"),
    (dict(mask=torch.zeros(2, 1, 16, 15)), ValueError, "mask must have shape"),
    (dict(mask=MASK.double()), TypeError, "mask has dtype"),
    (dict(mask=[0.0]), TypeError, "mask must be a torch.Tensor"),
    (dict(weight=torch.zeros(5, 3, 4, 4)), ValueError, "weight must have 4 input channels"),
    (dict(weight=torch.zeros(5, 4, 4, 3)), ValueError, "square kernel"),
    (dict(weight=W.bfloat16()), TypeError, "weight has dtype"),
    (dict(bias=torch.zeros(4)), ValueError, r"bias must have shape \(5,\)"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=2.0), TypeError, "stride must be an int"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(weight=torch.zeros(5, 4, 17, 17)), ValueError, "kernel_size 17 is larger"),
    (dict(out=torch.zeros(2, 8, 4, 4), channel_offset=4), ValueError, "out must have shape"),
    (dict(out=torch.zeros(2, 9, 5, 4), channel_offset=4), ValueError, "out must have shape"),
    (dict(out=torch.zeros(2, 9, 4, 4).double(), channel_offset=4), TypeError, "out has dtype"),
    (dict(channel_offset=2), ValueError, "channel_offset must be 0 without out"),
    (dict(out=torch.zeros(2, 9, 4, 4), channel_offset=-1), ValueError, "channel_offset must be >= 0"),
])
def test_validation_names_the_argument(kwargs, error, match):
    args = dict(image=IMG, mask=MASK, weight=W, bias=B, stride=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ops.downsample_cond(args.pop("image"), args.pop("mask"), args.pop("weight"), args.pop("bias"), **args)


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    with pytest.raises(ops.UnsupportedBackendError, match="dtype float64 is not supported"):
        ops.downsample_cond(IMG.double(), MASK.double(), W.double(), B.double(), stride=4, backend="cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(_backend, "_CHOSEN", {})
    with pytest.raises(ops.UnsupportedBackendError, match="backend 'triton' cannot run.*TRITON_INTERPRET=1"):
        ops.downsample_cond(IMG, MASK, W, B, stride=4, backend="triton")


def test_automatic_choice_on_cpu_is_the_cpu_kernel(monkeypatch):
    """Even under TRITON_INTERPRET=1 the automatic choice for CPU tensors is the C++ kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backend, "_CHOSEN", {})
    impl = _backend.dispatch("downsample_cond", ops.downsample._IMPLS, IMG.device, IMG.dtype, None)
    assert impl is ops.downsample._downsample_cpu


# ---------------------------------------------------------------------------------------------
# DownsampleCond
# ---------------------------------------------------------------------------------------------


def test_module_zero_init_is_exactly_zero_and_learns(gen):
    module = DownsampleCond(out_channels=8, kernel_size=4, stride=4)
    image, mask = rand(gen, 2, 3, 32, 32), (torch.rand(2, 1, 32, 32, generator=gen) > 0.5).float()
    buf = rand(gen, 2, 12, 8, 8)
    x_t = buf[:, :4].clone()
    out = module(image, mask, out=buf, channel_offset=4)
    assert out is buf and torch.equal(buf[:, 4:], torch.zeros(2, 8, 8, 8)) and torch.equal(buf[:, :4], x_t)
    # A UNet's first conv with non-zero weights on the new channels gives ∂L/∂cond ≠ 0.
    first_conv, target = rand(gen, 16, 12, 3, 3), rand(gen, 2, 16, 6, 6)
    unet_in = module(image, mask, out=torch.zeros(2, 12, 8, 8), channel_offset=4)
    (torch.conv2d(unet_in, first_conv) - target).square().sum().backward()
    assert module.weight.grad.abs().sum() > 0 and module.bias.grad.abs().sum() > 0


def test_module_random_init_matches_conv2d(gen):
    module = DownsampleCond(out_channels=6, kernel_size=5, stride=3, padding=2, zero_init=False)
    conv = torch.nn.Conv2d(4, 6, 5, stride=3, padding=2)
    conv.load_state_dict({"weight": module.weight.detach(), "bias": module.bias.detach()})
    image, mask = rand(gen, 2, 3, 23, 17), torch.rand(2, 1, 23, 17, generator=gen)
    torch.testing.assert_close(module(image, mask), conv(torch.cat([image, mask], 1)), rtol=1e-5, atol=1e-5)
    assert "zero_init=False" in repr(module)
