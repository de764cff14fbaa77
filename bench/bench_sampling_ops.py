"""Fused sampler ops against the ways people run them today: diffusers' DDIMScheduler.step after
an eager classifier-free-guidance combination, the same math as eager torch ops, and that math
under torch.compile.

    python -m pytest bench/bench_sampling_ops.py --benchmark-only

Bytes diffrt moves per call (float32, N samples of M elements): ddim_step with guidance reads x
and the 2N-row model output and writes x_prev: 16·N·M; cfg_combine reads 2N·M, writes N·M: 12·N·M;
mask_blend reads a, b (and a mask 1/C the size) and writes out: ≈12·N·C·HW.
"""

import math

import pytest
import torch

from diffrt import ops

from .conftest import OURS, record

diffusers = pytest.importorskip("diffusers")

# torch.compile's own import path still touches torch.jit.script_method (deprecated in torch 2.13).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SHAPES = [(2, 4, 64, 64), (2, 4, 128, 128), (8, 3, 256, 256)]
W = 7.5
RESCALE = 0.7
NUM_STEPS = 50


def _case(shape, threads, dtype=torch.float32):
    return f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')} {threads}thr"


def _inputs(shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    out = torch.randn((2 * shape[0], *shape[1:]), generator=g).to(dtype)
    return x, out


def _scheduler():
    s = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    s.set_timesteps(NUM_STEPS)
    t = int(s.timesteps[NUM_STEPS // 2])
    prev = t - s.config.num_train_timesteps // NUM_STEPS
    return s, t, float(s.alphas_cumprod[t]), float(s.alphas_cumprod[prev])


def _eager_cfg_ddim(x, out, w, a_t, a_prev):
    """What a hand-written sampler does: chunk, combine, then eq. 12 at η = 0 as separate torch ops."""
    uncond, cond = out.chunk(2)
    eps = uncond + w * (cond - uncond)
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


def _diffusers_cfg_step(scheduler, t, x, out, w, rescale):
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    uncond, cond = out.chunk(2)
    eps = uncond + w * (cond - uncond)
    if rescale:
        eps = rescale_noise_cfg(eps, cond, guidance_rescale=rescale)
    return scheduler.step(eps, t, x).prev_sample


_COMPILED = {}


def _compiled(threads):
    # Inductor fixes the OpenMP thread count when it compiles, so keep one compiled graph per count.
    if threads not in _COMPILED:
        _COMPILED[threads] = torch.compile(_eager_cfg_ddim, dynamic=False)
    return _COMPILED[threads]


IMPLS = ["diffrt", "diffusers step + eager CFG", "eager torch", "torch.compile"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_ddim_step_guided(benchmark, threads, shape, impl):
    x, out = _inputs(shape)
    scheduler, t, a_t, a_prev = _scheduler()
    if impl == OURS:
        fn = lambda: ops.ddim_step(x, out, a_t, a_prev, guidance_scale=W)  # noqa: E731
    elif impl == "diffusers step + eager CFG":
        fn = lambda: _diffusers_cfg_step(scheduler, t, x, out, W, 0.0)  # noqa: E731
    elif impl == "eager torch":
        fn = lambda: _eager_cfg_ddim(x, out, W, a_t, a_prev)  # noqa: E731
    else:
        compiled = _compiled(threads)
        for _ in range(2):
            compiled(x, out, W, a_t, a_prev)  # compile outside the timed region
        fn = lambda: compiled(x, out, W, a_t, a_prev)  # noqa: E731
    want = _eager_cfg_ddim(x.double(), out.double(), W, a_t, a_prev)
    torch.testing.assert_close(fn().double(), want, rtol=1e-4, atol=1e-4)
    benchmark(fn)
    numel = x.numel()
    record(benchmark, "ddim_step + CFG (float32)", _case(shape, threads), impl,
           bytes_moved=4 * numel * x.element_size(), triad_numel=numel)


@pytest.mark.parametrize("impl", ["diffrt", "diffusers rescale_noise_cfg + step"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_ddim_step_guidance_rescale(benchmark, threads, shape, impl):
    x, out = _inputs(shape)
    scheduler, t, a_t, a_prev = _scheduler()
    if impl == OURS:
        fn = lambda: ops.ddim_step(x, out, a_t, a_prev, guidance_scale=W, guidance_rescale=RESCALE)  # noqa: E731
    else:
        fn = lambda: _diffusers_cfg_step(scheduler, t, x, out, W, RESCALE)  # noqa: E731
    benchmark(fn)
    # One more read of the model output than the plain step (the per-sample std pass).
    record(benchmark, "ddim_step + CFG + guidance_rescale (float32)", _case(shape, threads), impl,
           bytes_moved=6 * x.numel() * x.element_size(), triad_numel=x.numel())


@pytest.mark.parametrize("impl", ["diffrt", "eager torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_cfg_combine(benchmark, threads, shape, impl):
    _, out = _inputs(shape)
    if impl == OURS:
        fn = lambda: ops.cfg_combine(out, W)  # noqa: E731
    else:
        def fn():
            uncond, cond = out.chunk(2)
            return uncond + W * (cond - uncond)
    benchmark(fn)
    numel = out.numel() // 2
    record(benchmark, "cfg_combine (float32)", _case(shape, threads), impl,
           bytes_moved=3 * numel * out.element_size(), triad_numel=numel)


@pytest.mark.parametrize("impl", ["diffrt", "eager torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_mask_blend(benchmark, threads, shape, impl):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = (torch.rand((shape[0], 1, *shape[2:]), generator=g) > 0.5).float()
    if impl == OURS:
        fn = lambda: ops.mask_blend(mask, a, b)  # noqa: E731
    else:
        fn = lambda: mask * a + (1 - mask) * b  # noqa: E731
    benchmark(fn)
    record(benchmark, "mask_blend (float32)", _case(shape, threads), impl,
           bytes_moved=(3 * a.numel() + mask.numel()) * a.element_size(), triad_numel=a.numel())


@pytest.mark.parametrize("impl", ["diffrt", "eager torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_ddim_step_guided_bfloat16(benchmark, threads, shape, impl):
    x, out = _inputs(shape, torch.bfloat16)
    _, _, a_t, a_prev = _scheduler()
    if impl == OURS:
        fn = lambda: ops.ddim_step(x, out, a_t, a_prev, guidance_scale=W)  # noqa: E731
    else:
        fn = lambda: _eager_cfg_ddim(x, out, W, a_t, a_prev)  # noqa: E731
    benchmark(fn)
    record(benchmark, "ddim_step + CFG (bfloat16)", _case(shape, threads, torch.bfloat16), impl,
           bytes_moved=4 * x.numel() * x.element_size(), triad_numel=x.numel(), dtype=torch.bfloat16)
