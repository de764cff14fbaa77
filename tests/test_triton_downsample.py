"""The Triton downsample_cond kernel (diffrt.kernels.downsample_conv) under Triton's interpreter on CPU
tensors, against torch.conv2d + torch.cat. Small shapes: the interpreter runs each program in numpy."""

import math
import os

import pytest
import torch

# conftest.py sets TRITON_INTERPRET=1 before anything imports triton: @triton.jit decides between
# compiling and interpreting when it decorates, triton's own library functions included.
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 must be set before triton is imported", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install 'diffrt[triton]')")

from diffrt import ops  # noqa: E402
from diffrt.kernels.downsample_conv import downsample_conv  # noqa: E402
from tests._helpers import assert_close_to_ref, rand  # noqa: E402

# (N, image channels, H, W, k, s, p, C, channels of out, channel offset)
CASES = [
    (2, 3, 64, 64, 16, 16, 0, 16, 20, 4),  # k = s = 16: two K chunks per input channel
    (1, 3, 33, 29, 4, 4, 0, 20, 27, 5),  # k = s, sizes not multiples of s, C not a power of two
    (3, 3, 19, 23, 5, 3, 2, 7, 12, 1),  # k > s with padding
    (1, 2, 17, 18, 3, 1, 1, 70, 75, 3),  # stride 1; C > one channel block; two image channels
]
IDS = ["k16s16", "k4s4-odd", "k5s3p2", "k3s1p1-C70"]


def _inputs(gen, n, ci, h, w, k, c, dtype, mask_batch=None):
    image = rand(gen, n, ci, h, w, dtype=dtype)
    mask = (torch.rand(mask_batch or n, 1, h, w, generator=gen) > 0.5).to(dtype)
    weight = rand(gen, c, ci + 1, k, k, dtype=dtype, scale=1 / k)
    bias = rand(gen, c, dtype=dtype)
    return image, mask, weight, bias


def _conv_then_cat(x_t, image, mask, weight, bias, s, p):
    """What the kernel replaces, in float64: torch.cat([x_t, conv2d(torch.cat([image, mask]))])."""
    mask = mask.expand(image.shape[0], -1, -1, -1)
    cond = torch.conv2d(torch.cat([image, mask], 1).double(), weight.double(), bias.double(), stride=s, padding=p)
    return torch.cat([x_t.double(), cond], 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_triton_kernel_float32_into_channel_slice(gen, case):
    n, ci, h, w, k, s, p, c, c_total, offset = case
    image, mask, weight, bias = _inputs(gen, n, ci, h, w, k, c, torch.float32)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x_t = rand(gen, n, offset, ho, wo)
    out = torch.full((n, c_total, ho, wo), math.nan)
    out[:, :offset] = x_t
    assert downsample_conv(image, mask, weight, bias, stride=s, padding=p, out=out, channel_offset=offset) is out
    want = _conv_then_cat(x_t, image, mask, weight, bias, s, p)
    scale = _conv_then_cat(x_t.abs(), image.abs(), mask, weight.abs(), bias.abs(), s, p).max().item()
    assert_close_to_ref(out[:, :offset + c], want, dtype=torch.float32, scale=scale)
    assert out[:, offset + c:].isnan().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernel_half_storage(gen, dtype):
    image, mask, weight, bias = _inputs(gen, 2, 3, 24, 20, 4, 12, dtype, mask_batch=1)
    out = ops.downsample_cond(image, mask, weight, bias, stride=4, backend="triton")
    want = _conv_then_cat(torch.empty(2, 0, 6, 5), image, mask, weight, bias, 4, 0)
    scale = _conv_then_cat(torch.empty(2, 0, 6, 5), image.abs(), mask, weight.abs(), bias.abs(), 4, 0).max().item()
    assert out.dtype == dtype
    # Float32 accumulation, one rounding to the storage dtype at the end.
    assert_close_to_ref(out, want, dtype=dtype, scale=scale)


def test_triton_backend_matches_cpu_kernel_any_strides(gen):
    """Channels-last inputs and a channels-last out buffer: the kernel takes strides, no copies."""
    image, mask, weight, bias = _inputs(gen, 2, 3, 40, 40, 8, 10, torch.float32)
    image = image.contiguous(memory_format=torch.channels_last)
    out = torch.full((2, 14, 5, 5), math.nan).contiguous(memory_format=torch.channels_last)
    ops.downsample_cond(image, mask, weight, bias, stride=8, out=out, channel_offset=4, backend="triton")
    cpu = ops.downsample_cond(image, mask, weight, bias, stride=8, backend="cpu")
    torch.testing.assert_close(out[:, 4:], cpu, rtol=1e-5, atol=1e-5)
    assert out[:, :4].isnan().all()


def test_triton_backend_gradients(gen):
    image, mask, weight, bias = _inputs(gen, 2, 3, 16, 16, 4, 6, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (image, mask, weight, bias)]
    ops.downsample_cond(*leaves, stride=4, backend="triton").square().sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (image, mask, weight, bias)]
    ops.downsample_cond_ref(*ref_leaves, stride=4).square().sum().backward()
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
