"""Collects bench_attention.py's timings and prints the GFLOP/s table at the end of the pytest run.

Per case: GFLOP/s (4·B·H·Lq·Lk·d per forward, 2.5× that per backward, so forward+backward counts 14·BHLqLkd),
the fraction of the GEMM peak measured in the same run at the same dtype and thread count (the faster of
torch.matmul and oneDNN's linear for float32 — torch's float32 matmul goes through MKL, which reaches only
about half of oneDNN's speed on this AMD CPU — and torch.matmul, i.e. oneDNN AVX512-BF16, for bfloat16), and diffrt's speed-up over torch
SDPA and over the naive softmax(QKᵀ)V.
"""

from __future__ import annotations

import os
from collections import defaultdict

# (dtype, threads) -> best GEMM GFLOP/s
GEMM_PEAK: dict = {}
# (impl, mode, dtype, shape, threads) -> (seconds, flops)
TIMES: dict = {}


def record_gemm(dtype: str, threads: int, gflops: float) -> None:
    key = (dtype, threads)
    GEMM_PEAK[key] = max(GEMM_PEAK.get(key, 0.0), gflops)


def record(impl: str, mode: str, dtype: str, shape: tuple, threads: int, seconds: float, flops: float) -> None:
    TIMES[(impl, mode, dtype, shape, threads)] = (seconds, flops)


def table_lines() -> list:
    if not TIMES:
        return []
    lines = ["GEMM peak measured in this run (GFLOP/s): " + ", ".join(
        f"{dt} {t} thr {g:.0f}" for (dt, t), g in sorted(GEMM_PEAK.items()))]
    header = (f"{'dtype':5} {'mode':7} {'thr':>3} {'(B·H, Lq, Lk, d)':22} {'diffrt':>8} {'%peak':>6} "
              f"{'sdpa':>8} {'naive':>8} {'×sdpa':>6} {'×naive':>6}")
    lines += [header, "-" * len(header)]
    cases = defaultdict(dict)
    for (impl, mode, dtype, shape, threads), (sec, flops) in TIMES.items():
        cases[(dtype, mode, threads, shape)][impl] = flops / sec / 1e9
    for (dtype, mode, threads, shape), g in sorted(cases.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        ours, sdpa, naive = g.get("diffrt"), g.get("sdpa"), g.get("naive")
        peak = GEMM_PEAK.get((dtype, threads))

        def fmt(x, spec="8.1f"):
            return f"{x:{spec}}" if x is not None else f"{'-':>{spec.split('.')[0]}}"

        lines.append(
            f"{dtype:5} {mode:7} {threads:>3} {str(shape):22} {fmt(ours)} "
            f"{fmt(ours / peak if ours and peak else None, '6.2f')} {fmt(sdpa)} {fmt(naive)} "
            f"{fmt(ours / sdpa if ours and sdpa else None, '6.2f')} {fmt(ours / naive if ours and naive else None, '6.2f')}")
    return lines


def terminal_summary(terminalreporter) -> None:
    lines = table_lines()
    if not lines:
        return
    terminalreporter.section("diffrt attention: GFLOP/s, fraction of GEMM peak, speed-up")
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("DIFFRT_BENCH_ATTENTION_REPORT")
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
