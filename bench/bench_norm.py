"""Normalisation and activation ops of an SD-like UNet body against torch's eager equivalents:
F.group_norm + F.silu (diffusers' ResnetBlock2D norm → nonlinearity), F.layer_norm (its transformer
blocks), diffusers' GEGLU after its projection (chunk, F.gelu, multiply) and diffusers' Timesteps +
TimestepEmbedding (sinusoid, F.linear, F.silu, F.linear) against timestep_mlp; and a whole ResnetBlock2D as
accelerate(pipe) runs it (norm → SiLU fused) against diffusers' block, eager and with only its GroupNorms
on diffrt (what the GroupNorm swap alone gives).

    python -m pytest bench/bench_norm.py --benchmark-only

Bytes diffrt moves per call (s bytes per element): group_norm reads x twice and writes y, 3·s per
element; layer_norm reads and writes each row once, 2·s; geglu reads (…, 2·D) and writes (…, D), 3·s
per output element; timestep_mlp reads both weight matrices once, s per weight (memory-bound at small
batch: 2·batch flops per weight).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from diffrt import ops

from .conftest import OURS, record

DTYPES = [torch.float32, torch.bfloat16]
GROUP_SHAPES = [(2, 320, 64, 64), (2, 640, 32, 32)]
LAYER_SHAPES = [(2, 4096, 320)]
GEGLU_SHAPES = [(2, 4096, 2560)]
# (batch, in_dim, hidden_dim, out_dim): SD 1.x/2.x's time embedding (320 → 1280 → 1280) and a mid-size UNet's
MLP_SHAPES = [(2, 320, 1280, 1280), (2, 128, 512, 512)]


def _name(dtype):
    return str(dtype).replace("torch.", "")


def _case(shape, threads, dtype, layout=""):
    return f"{'x'.join(map(str, shape))}{layout} {_name(dtype)} {threads}thr"


def _randn(shape, dtype, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("impl", [OURS, "eager torch"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", GROUP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_group_norm_silu(benchmark, threads, shape, dtype, channels_last, impl):
    x = _randn(shape, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    weight, bias = _randn((c,), dtype, 1), _randn((c,), dtype, 2)
    if impl == OURS:
        fn = lambda: ops.group_norm(x, 32, weight, bias, 1e-5, activation="silu")  # noqa: E731
    else:
        fn = lambda: F.silu(F.group_norm(x, 32, weight, bias, 1e-5))  # noqa: E731
    benchmark(fn)
    record(benchmark, f"group_norm + SiLU ({_name(dtype)})", _case(shape, threads, dtype, " nhwc" if channels_last else ""),
           impl, bytes_moved=3 * x.numel() * x.element_size(), triad_numel=x.numel(), dtype=dtype)


@pytest.mark.parametrize("impl", [OURS, "eager torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_layer_norm(benchmark, threads, shape, dtype, impl):
    x = _randn(shape, dtype)
    d = shape[-1]
    weight, bias = _randn((d,), dtype, 1), _randn((d,), dtype, 2)
    if impl == OURS:
        fn = lambda: ops.layer_norm(x, weight, bias, 1e-5)  # noqa: E731
    else:
        fn = lambda: F.layer_norm(x, (d,), weight, bias, 1e-5)  # noqa: E731
    benchmark(fn)
    record(benchmark, f"layer_norm ({_name(dtype)})", _case(shape, threads, dtype), impl,
           bytes_moved=2 * x.numel() * x.element_size(), triad_numel=x.numel(), dtype=dtype)


def _diffusers_geglu_tail(x):
    """diffusers' GEGLU.forward after self.proj."""
    hidden, gate = x.chunk(2, dim=-1)
    return hidden * F.gelu(gate)


@pytest.mark.parametrize("impl", [OURS, "diffusers GEGLU (eager)"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("shape", GEGLU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_geglu(benchmark, threads, shape, dtype, impl):
    x = _randn(shape, dtype)
    fn = (lambda: ops.geglu(x)) if impl == OURS else (lambda: _diffusers_geglu_tail(x))
    benchmark(fn)
    out_numel = x.numel() // 2
    record(benchmark, f"geglu ({_name(dtype)})", _case(shape, threads, dtype), impl,
           bytes_moved=3 * out_numel * x.element_size(), triad_numel=out_numel, dtype=dtype)


RESNET_SHAPES = [(2, 320, 32, 32)]


@pytest.mark.parametrize("impl", [OURS, "diffusers block, diffrt GroupNorm", "diffusers block (eager)"])
@pytest.mark.parametrize("shape", RESNET_SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_resnet_block(benchmark, threads, shape, impl):
    resnet = pytest.importorskip("diffusers.models.resnet")
    from diffrt.integrations.diffusers_norms import DiffrtGroupNorm, diffrt_resnet_block

    torch.manual_seed(0)
    block = resnet.ResnetBlock2D(in_channels=shape[1], temb_channels=1280).eval()
    if impl == OURS:
        block = diffrt_resnet_block(block)
    elif impl != "diffusers block (eager)":
        block.norm1, block.norm2 = DiffrtGroupNorm.from_module(block.norm1), DiffrtGroupNorm.from_module(block.norm2)
    x, temb = _randn(shape, torch.float32), _randn((shape[0], 1280), torch.float32, 1)

    def fn():
        with torch.no_grad():
            return block(x, temb)

    benchmark(fn)
    record(benchmark, "ResnetBlock2D (float32)", _case(shape, threads, torch.float32), impl)


def _diffusers_timestep_mlp(t, w1, b1, w2, b2):
    """diffusers' Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0) + TimestepEmbedding("silu") forward:
    get_timestep_embedding in float32, cast to the weights' dtype, linear_1, SiLU, linear_2."""
    half = w1.shape[1] // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / half
    arg = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).to(w1.dtype)
    return F.linear(F.silu(F.linear(emb, w1, b1)), w2, b2)


@pytest.mark.parametrize("impl", [OURS, "diffusers Timesteps + TimestepEmbedding (eager)"])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16], ids=_name)
@pytest.mark.parametrize("shape", MLP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_timestep_mlp(benchmark, threads, shape, dtype, impl):
    batch, in_dim, hidden_dim, out_dim = shape
    t = torch.tensor([981.0, 1.0][:batch] + [500.0] * (batch - 2))
    w1, b1 = _randn((hidden_dim, in_dim), dtype, 1) * in_dim ** -0.5, _randn((hidden_dim,), dtype, 2)
    w2, b2 = _randn((out_dim, hidden_dim), dtype, 3) * hidden_dim ** -0.5, _randn((out_dim,), dtype, 4)
    if impl == OURS:
        fn = lambda: ops.timestep_mlp(t, w1, b1, w2, b2, flip_sin_to_cos=True, downscale_freq_shift=0.0)  # noqa: E731
    else:
        fn = lambda: _diffusers_timestep_mlp(t, w1, b1, w2, b2)  # noqa: E731
    benchmark(fn)
    weights = hidden_dim * in_dim + out_dim * hidden_dim
    record(benchmark, f"timestep_mlp ({_name(dtype)})", _case(shape, threads, dtype), impl,
           bytes_moved=weights * w1.element_size(), triad_numel=weights // 3, dtype=dtype)
