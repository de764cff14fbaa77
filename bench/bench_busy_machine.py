"""diffrt's ops on a busy machine: each op runs beside one CPU-bound process (a Python busy loop at the
same priority, started by the fixture and killed after), as on a shared server or a laptop doing other
work, against the peer it replaces, at 1 and 2 threads.

    python -m pytest bench/bench_busy_machine.py --benchmark-only

What this measures: that diffrt's kernels slow down only in proportion to the CPU they get. With
busy-waiting thread teams (OpenMP's default) a 2-thread op beside one busy process waits at every join
for the thread the scheduler has parked; diffrt's pool shares the work out item by item and the caller
works too (csrc/cpu/thread_pool.h). The ratios are peer time over diffrt time, both measured under the
same competition; compare them with the idle-machine tables of the other benchmarks.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from diffrt import ops

from .bench_sampling_ops import _diffusers_cfg_step, _inputs, _scheduler
from .conftest import OURS, record

diffusers = pytest.importorskip("diffusers")

W = 7.5


@pytest.fixture(scope="module")
def busy_process():
    """One CPU-bound process for the whole module (the same competition for every implementation)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


def _attention_inputs(lq, lk, d, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, lq, d, generator=g).to(dtype)
    k = torch.randn(2, 8, lk, d, generator=g).to(dtype)
    v = torch.randn(2, 8, lk, d, generator=g).to(dtype)
    return q, k, v


def _run(benchmark, table, case, impl, fn, want, *, atol):
    torch.testing.assert_close(fn().double(), want, rtol=atol, atol=atol)
    benchmark(fn)
    record(benchmark, table, case, impl)


@pytest.mark.usefixtures("busy_process")
@pytest.mark.parametrize("impl", [OURS, "diffusers step + eager CFG"])
def bench_busy_ddim_step_guided(benchmark, threads, impl):
    x, out = _inputs((2, 4, 64, 64))
    scheduler, t, a_t, a_prev = _scheduler()
    if impl == OURS:
        fn = lambda: ops.ddim_step(x, out, a_t, a_prev, guidance_scale=W)  # noqa: E731
    else:
        fn = lambda: _diffusers_cfg_step(scheduler, t, x, out, W, 0.0)  # noqa: E731
    want = _diffusers_cfg_step(scheduler, t, x.double(), out.double(), W, 0.0)
    _run(benchmark, "beside one busy process", f"ddim_step+CFG 2x4x64x64 {threads}thr", impl, fn, want, atol=1e-4)


@pytest.mark.usefixtures("busy_process")
@pytest.mark.parametrize("impl", [OURS, "torch SDPA"])
@pytest.mark.parametrize("lk", [1024, 77], ids=["self", "cross"])
def bench_busy_attention(benchmark, threads, lk, impl):
    q, k, v = _attention_inputs(1024, lk, 40)
    if impl == OURS:
        fn = lambda: ops.attention(q, k, v)  # noqa: E731
    else:
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    want = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    _run(benchmark, "beside one busy process", f"attention 2x8x1024x40 Lk={lk} {threads}thr", impl, fn, want, atol=1e-4)


@pytest.mark.usefixtures("busy_process")
@pytest.mark.parametrize("impl", [OURS, "F.group_norm + F.silu"])
def bench_busy_group_norm_silu(benchmark, threads, impl):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 320, 32, 32, generator=g)
    weight, bias = torch.randn(320, generator=g), torch.randn(320, generator=g)
    if impl == OURS:
        fn = lambda: ops.group_norm(x, 32, weight, bias, 1e-5, activation="silu")  # noqa: E731
    else:
        fn = lambda: F.silu(F.group_norm(x, 32, weight, bias, 1e-5))  # noqa: E731
    want = F.silu(F.group_norm(x.double(), 32, weight.double(), bias.double(), 1e-5))
    _run(benchmark, "beside one busy process", f"group_norm+SiLU 2x320x32x32 {threads}thr", impl, fn, want, atol=1e-4)


@pytest.mark.usefixtures("busy_process")
@pytest.mark.parametrize("impl", [OURS, "conv2d + cat"])
def bench_busy_downsample_cond(benchmark, threads, impl):
    g = torch.Generator().manual_seed(0)
    image, mask = torch.randn(1, 3, 512, 512, generator=g), (torch.rand(1, 1, 512, 512, generator=g) > 0.5).float()
    weight, bias = torch.randn(64, 4, 8, 8, generator=g) / 8, torch.randn(64, generator=g)
    x_t = torch.randn(1, 4, 64, 64, generator=g)

    def fn():
        if impl == OURS:
            out = torch.empty(1, 68, 64, 64)
            out[:, :4] = x_t
            return ops.downsample_cond(image, mask, weight, bias, stride=8, out=out, channel_offset=4)
        return torch.cat([x_t, F.conv2d(torch.cat([image, mask], 1), weight, bias, stride=8)], 1)

    want = torch.cat([x_t.double(), F.conv2d(torch.cat([image, mask], 1).double(), weight.double(), bias.double(),
                                             stride=8)], 1)
    _run(benchmark, "beside one busy process", f"downsample_cond 512->64 k=s=8 C=64 {threads}thr", impl, fn, want,
         atol=1e-3)
