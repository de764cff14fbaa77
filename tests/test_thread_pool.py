"""diffrt's CPU thread pool (csrc/cpu/thread_pool.h): results that do not depend on the thread count,
concurrent callers, forked children, and no OpenMP runtime in the extension."""

import concurrent.futures
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

import diffrt._C as _C
from diffrt.ops import attention, ddim_step, downsample_cond, group_norm


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _ops(seed: int):
    """One call of each kind of parallel loop: the attention regions (query tiles, backward heads), the
    row splitter (ddim_step), the per-item loop (group_norm moments) and the downsampling rows."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, 300, 40, generator=g, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, backend="cpu")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    x, eps = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 4, 64, 64, generator=g)
    step = ddim_step(x, eps, 0.5, 0.7, backend="cpu")
    norm = group_norm(torch.randn(2, 64, 32, 32, generator=g), 8, backend="cpu")
    image, mask = torch.randn(2, 3, 128, 128, generator=g), torch.rand(2, 1, 128, 128, generator=g)
    cond = downsample_cond(image, mask, torch.randn(16, 4, 4, 4, generator=g), stride=4, backend="cpu")
    return [out.detach(), *grads, step, norm, cond]


@pytest.mark.usefixtures("restore_threads")
def test_results_are_bitwise_the_same_for_any_thread_count():
    # Work is claimed dynamically, but every item writes its own outputs and every reduction merges its
    # partials in a fixed order: the thread count and the hand-out order must not change a bit. (Up to
    # batch·heads = 6 threads: with more, attention's backward splits each head's keys in chunks and sums
    # their dQ partials, a different float32 sum.)
    started_before = _C.pool_thread_count()
    torch.set_num_threads(1)
    expected = _ops(0)
    for threads in (2, 3, 6):
        torch.set_num_threads(threads)
        for got, want in zip(_ops(0), expected):
            assert torch.equal(got, want)
    # the pool grows only to the helpers asked for (threads − 1), not to the machine's thread count
    assert 1 <= _C.pool_thread_count() <= max(started_before, 5)


@pytest.mark.usefixtures("restore_threads")
def test_concurrent_callers_get_their_own_results():
    # Kernels release the GIL: a second caller finds the pool busy and runs its op alone.
    torch.set_num_threads(2)
    expected = [_ops(seed) for seed in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(_ops, [s for s in range(4) for _ in range(3)]))
    for i, got in enumerate(results):
        for a, b in zip(got, expected[i // 3]):
            assert torch.equal(a, b)


def _child_ops(queue):
    # torch's own OpenMP must stay at 1 thread in a forked child (libgomp is not fork-safe: a child that
    # asks it for a team hangs, as DataLoader workers avoid by the same setting); diffrt's kernels are
    # asked for 2 threads through the thread count they read.
    torch.set_num_threads(1)
    torch.get_num_threads = lambda: 2
    threads_before = len(os.listdir("/proc/self/task"))
    results = [t.numpy() for t in _ops(1)]
    queue.put((results, len(os.listdir("/proc/self/task")) - threads_before))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
@pytest.mark.usefixtures("restore_threads")
def test_a_forked_child_runs_parallel_kernels():
    # The parent's pool threads do not exist in a forked child (DataLoader workers are forked): the
    # child must start a pool of its own rather than wait on threads that will never come.
    torch.set_num_threads(2)
    expected = _ops(1)  # the parent's pool is running
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_ops, args=(queue,))
    child.start()
    got, new_threads = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert new_threads == 1  # its own pool thread: the parent's count of started threads was not inherited
    for a, b in zip(got, expected):
        assert torch.equal(torch.from_numpy(a), b)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the dynamic section with ldd")
def test_no_openmp_runtime_of_its_own():
    # torch brings its OpenMP runtime; a second one in the process (libgomp beside libiomp/libomp) is a
    # known source of oversubscription and crashes. diffrt links none.
    libs = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    assert not any(name in libs for name in ("libgomp", "libiomp", "libomp")), libs
    assert "OpenMP" in _C.build_info()["threads"]  # "... (no OpenMP runtime)"
