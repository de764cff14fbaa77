"""Fused attention against torch SDPA and the naive softmax(QKᵀ)V, with the GEMM peak of the same run.

    python -m pytest bench/bench_attention.py --benchmark-only [-k bf16] [-k 'not t1']

The table printed at the end (bench/attention_report.py) gives GFLOP/s, the fraction of the measured GEMM
peak, and the speed-ups. FLOPs: 4·B·H·Lq·Lk·d per forward (QKᵀ and PV), 10·B·H·Lq·Lk·d per backward.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from . import attention_report
from diffrt.ops import attention

# (B·H, Lq, Lk, d): self-attention at 32² and 64² latents, and cross-attention on 77 text tokens.
SHAPES = [(16, 1024, 1024, 64), (16, 4096, 4096, 64), (8, 4096, 4096, 40), (16, 4096, 77, 64), (8, 4096, 77, 40)]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
THREADS = [1, 2]


@pytest.fixture(params=THREADS, ids=lambda t: f"t{t}")
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def naive(q, k, v):
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


IMPLS = {
    "diffrt": attention,
    "sdpa": F.scaled_dot_product_attention,
    "naive": naive,
}


def big(shape) -> bool:
    return shape[1] * shape[2] >= 4096 * 4096 // 2


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_peak(benchmark, dtype, threads):
    """The GEMM roofline for this run: a 2048³ matmul (float32 also through oneDNN's linear, since torch's
    float32 matmul goes through MKL, which reaches only about half of oneDNN's speed on this AMD CPU)."""
    n = 2048
    a = torch.randn(n, n).to(DTYPES[dtype])
    b = torch.randn(n, n).to(DTYPES[dtype])
    benchmark.pedantic(torch.matmul, args=(a, b), rounds=5, warmup_rounds=1)
    attention_report.record_gemm(dtype, threads, 2 * n**3 / benchmark.stats.stats.min / 1e9)
    if dtype == "f32" and torch.backends.mkldnn.is_available():
        a_onednn, w_onednn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        linear = torch._C._nn.mkldnn_linear
        linear(a_onednn, w_onednn)
        best = min(_timed(linear, a_onednn, w_onednn) for _ in range(5))
        attention_report.record_gemm(dtype, threads, 2 * n**3 / best / 1e9)


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


@pytest.mark.parametrize("impl", list(IMPLS))  # the top decorator varies fastest: peers of a case run back to back
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward(benchmark, impl, dtype, shape, threads):
    if impl == "naive" and shape[1] * shape[2] > 4096 * 4096 // 2 and shape[0] > 8:
        pytest.skip("the naive path would materialise a 1 GB score matrix")
    BH, Lq, Lk, d = shape
    q, k, v = (torch.randn(1, BH, L, d).to(DTYPES[dtype]) for L in (Lq, Lk, Lk))
    fn = IMPLS[impl]
    with torch.no_grad():
        benchmark.pedantic(fn, args=(q, k, v), rounds=3 if big(shape) else 7, warmup_rounds=1)
    attention_report.record(impl, "fwd", dtype, shape, threads, benchmark.stats.stats.min, 4 * BH * Lq * Lk * d)


@pytest.mark.parametrize("impl", list(IMPLS))  # the top decorator varies fastest: peers of a case run back to back
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward(benchmark, impl, dtype, shape, threads):
    if impl == "naive" and big(shape):
        pytest.skip("the naive backward would hold several ≥0.5 GB score matrices")
    BH, Lq, Lk, d = shape
    q, k, v = (torch.randn(1, BH, L, d).to(DTYPES[dtype]).requires_grad_() for L in (Lq, Lk, Lk))
    dout = torch.randn(1, BH, Lq, d).to(DTYPES[dtype])
    fn = IMPLS[impl]

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(dout)

    benchmark.pedantic(step, rounds=2 if big(shape) else 5, warmup_rounds=1)
    attention_report.record(impl, "fwd+bwd", dtype, shape, threads, benchmark.stats.stats.min, 14 * BH * Lq * Lk * d)
