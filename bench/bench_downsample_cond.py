"""downsample_cond (Imagen Editor's image+mask conditioning conv, written into the UNet input buffer)
against what a model does without it: torch.cat([image, mask]) → conv2d → torch.cat([x_t, cond]),
in torch's default NCHW layout and in channels-last.

    python -m pytest bench/bench_downsample_cond.py --benchmark-only

Per image at 1024 → 64 (k = s = 16, C = 64): 2·64²·64·4·16² = 0.54 GFLOP; reads 4·1024² inputs
(16.8 MB in float32), writes 64·64² outputs (1 MB). At 256 → 64 (k = s = 4): 34 MFLOP, reads 1 MB.
Compute-bound: the GB/s column is only the effective input+output rate.
"""

import pytest
import torch
import torch.nn.functional as F

from diffrt import ops

from .conftest import OURS, record

X_T_CHANNELS = 4
CHANNELS = 64
# (N, input size, k = s): 1024 → 64 (base stage) and 256 → 64
CASES = [(1, 1024, 16), (1, 256, 4), (4, 256, 4)]
IMPLS = [OURS, "conv2d NCHW + cat", "NCHW->CL conv2d + cat", "CL conv2d (CL input) + cat"]


def _case(n, size, k, threads):
    return f"N={n} {size}->{size // k} k=s={k} C={CHANNELS} {threads}thr"


def _inputs(n, size, k):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 3, size, size, generator=g)
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
    weight = torch.randn(CHANNELS, 4, k, k, generator=g) / k
    bias = torch.randn(CHANNELS, generator=g)
    x_t = torch.randn(n, X_T_CHANNELS, size // k, size // k, generator=g)
    return image, mask, weight, bias, x_t


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-{c[1]}-k{c[2]}")
def bench_downsample_cond(benchmark, threads, case, impl):
    n, size, k = case
    image, mask, weight, bias, x_t = _inputs(n, size, k)
    if impl == OURS:
        buf = torch.empty(n, X_T_CHANNELS + CHANNELS, size // k, size // k)

        def fn():
            buf[:, :X_T_CHANNELS].copy_(x_t)  # the sampler's x_t, written into the UNet input buffer
            return ops.downsample_cond(image, mask, weight, bias, stride=k, out=buf, channel_offset=X_T_CHANNELS)
    elif impl == "conv2d NCHW + cat":
        def fn():
            cond = F.conv2d(torch.cat([image, mask], 1), weight, bias, stride=k)
            return torch.cat([x_t, cond], 1)
    elif impl == "NCHW->CL conv2d + cat":  # inputs arrive NCHW; the conversion is part of the cost
        weight_cl = weight.contiguous(memory_format=torch.channels_last)

        def fn():
            x = torch.cat([image, mask], 1).contiguous(memory_format=torch.channels_last)
            return torch.cat([x_t, F.conv2d(x, weight_cl, bias, stride=k)], 1)
    else:
        # torch's fastest conv here: [image | mask] already one channels-last tensor, prepared outside
        # the timed region (torch.cat of channels-last 3- and 1-channel tensors returns NCHW, so a model
        # would have to keep the concatenated 4-channel tensor channels-last itself).
        x_cl = torch.cat([image, mask], 1).contiguous(memory_format=torch.channels_last)
        weight_cl = weight.contiguous(memory_format=torch.channels_last)

        def fn():
            return torch.cat([x_t, F.conv2d(x_cl, weight_cl, bias, stride=k)], 1)

    want = torch.cat([x_t.double(), F.conv2d(torch.cat([image, mask], 1).double(), weight.double(), bias.double(),
                                             stride=k)], 1)
    torch.testing.assert_close(fn().double(), want, rtol=1e-4, atol=1e-4)
    benchmark(fn)
    inputs, outputs = 4 * n * size * size, n * (X_T_CHANNELS + CHANNELS) * (size // k) ** 2
    record(benchmark, "downsample_cond (float32)", _case(n, size, k, threads), impl,
           bytes_moved=4 * (inputs + outputs), triad_numel=inputs)
