"""Where one denoising step of the mid-size SD-like UNet spends its time, before and after
``accelerate(pipe)``, and how far the step is from the machine's GEMM rate.

    python -m bench.profile_step [--size mid|tiny] [--dtype float32|bfloat16] [--threads N]

One batched [uncond; cond] UNet call at the loop's shapes (bench_end_to_end.py), profiled with
torch.profiler; CPU self time is grouped by op kind. The step's convolution, linear and attention
FLOPs come from torch's FlopCounterMode on the eager UNet; the physical limit is those FLOPs at the
same-run torch.matmul 2048² rate in the same dtype.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .bench_end_to_end import SIZES, TEXT_TOKENS, inputs, pipeline

KINDS = (("convolution", ("conv", "mkldnn_convolution")), ("linear / matmul", ("addmm", "mm", "bmm", "linear", "matmul")),
         ("attention", ("attention", "scaled_dot_product", "softmax", "diffrt::attention")),
         ("norm", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm", "diffrt::group_norm",
                   "diffrt::layer_norm")),
         ("activation", ("silu", "gelu", "geglu", "sigmoid")), ("dtype copy", ("copy_", "aten::to", "_to_copy")),
         ("elementwise", ("add", "mul", "div", "sub", "cat", "chunk")))


UNRECORDED = "diffrt kernels + Python (no torch op)"


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, keys in KINDS:
        if any(key in lowered for key in keys):
            return kind
    return "other"


def gemm_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_call(pipe, size: str, dtype: torch.dtype):
    text, empty, latents = inputs(size, dtype)
    sample, states = torch.cat([latents] * 2), torch.cat([empty, text])
    t = torch.tensor(500)
    return lambda: pipe.unet(sample, t, encoder_hidden_states=states, return_dict=False)[0]


def profile(call, rounds: int = 3):
    """Each op kind's share of the wall time; what no torch op records (diffrt's kernels, called
    straight from Python, and Python itself) is its own row."""
    call()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            call()
    wall = (time.perf_counter() - start) * 1e6  # µs, as the profiler counts
    shares = defaultdict(float)
    for event in prof.key_averages():
        shares[kind_of(event.key)] += event.self_cpu_time_total
    shares[UNRECORDED] = max(0.0, wall - sum(shares.values()))
    return {k: v / wall for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="mid")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    from diffrt.integrations.diffusers import accelerate

    pipe = pipeline(args.size, dtype)
    call = step_call(pipe, args.size, dtype)
    with FlopCounterMode(display=False) as counter:
        call()
    flops = counter.get_total_flops()
    rate = gemm_gflops(dtype)
    rows = {}
    with torch.no_grad():
        for label in ("diffusers eager", "accelerate(pipe)"):
            if label.startswith("accelerate"):
                accelerate(pipe)
            seconds = min(_timed(call) for _ in range(3))
            rows[label] = (seconds, profile(call))
    print(f"UNet {args.size} ({TEXT_TOKENS} text tokens), {args.dtype}, {args.threads} thread(s): "
          f"{flops / 1e9:.1f} GFLOP per batched call; torch.matmul 2048² runs at {rate:.1f} GFLOP/s")
    kinds = sorted({k for _, shares in rows.values() for k in shares})
    print("| | s per call | % of GEMM rate | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 3) + "|")
    for label, (seconds, shares) in rows.items():
        limit = flops / 1e9 / rate
        print(f"| {label} | {seconds:.3f} | {100 * limit / seconds:.0f} % | " +
              " | ".join(f"{100 * shares.get(k, 0):.0f} %" for k in kinds) + " |")


if __name__ == "__main__":
    main()
