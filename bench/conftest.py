"""Shared benchmark machinery: thread settings, same-run bandwidth baselines and the ratio tables.

Each benchmark records its median time under (table, case); at the end of the session the tables
print diffrt's time, its speed-up over every peer measured in the same run, and effective GB/s
against a STREAM-style triad (a = b + s·c) on arrays of the case's size, also measured in this run.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import torch

# (table, case) -> {"impls": {name: seconds}, "bytes": bytes diffrt moves, "triad_gbps": float}
RESULTS: dict = defaultdict(lambda: {"impls": {}, "bytes": None, "triad_gbps": None})
OURS = "diffrt"


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def triad_gbps(numel: int, dtype: torch.dtype = torch.float32, repeats: int = 30) -> float:
    """Best-of-n STREAM triad bandwidth a = b + s·c over `numel` elements (reads 2, writes 1 array)."""
    b = torch.randn(numel).to(dtype)
    c = torch.randn(numel).to(dtype)
    a = torch.empty_like(b)
    for _ in range(3):
        torch.add(b, c, alpha=0.5, out=a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(b, c, alpha=0.5, out=a)
        best = min(best, time.perf_counter() - t0)
    return 3 * numel * b.element_size() / best / 1e9


def record(benchmark, table: str, case: str, impl: str, *, bytes_moved: int | None = None, triad_numel: int | None = None,
           dtype: torch.dtype = torch.float32) -> None:
    """Store the median of a finished benchmark for the summary tables (no-op with --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return
    entry = RESULTS[(table, case)]
    entry["impls"][impl] = stats.stats.median
    if bytes_moved is not None:
        entry["bytes"] = bytes_moved
    if triad_numel is not None and entry["triad_gbps"] is None:
        entry["triad_gbps"] = triad_gbps(triad_numel, dtype)


def pytest_terminal_summary(terminalreporter):
    from .attention_report import terminal_summary as attention_summary

    attention_summary(terminalreporter)
    if not RESULTS:
        return
    tables = defaultdict(list)
    for (table, case), entry in RESULTS.items():
        tables[table].append((case, entry))
    write = terminalreporter.write_line
    for table, rows in tables.items():
        peers = sorted({name for _, e in rows for name in e["impls"] if name != OURS})
        write("")
        write(f"== {table}: speed-up of diffrt over each peer (peer time / diffrt time), same run ==")
        header = f"{'case':<34} {'diffrt':>10} " + " ".join(f"{'x ' + p:>22}" for p in peers)
        header += f" {'GB/s':>8} {'triad GB/s':>10} {'% triad':>8}"
        write(header)
        for case, e in rows:
            ours = e["impls"].get(OURS)
            if ours is None:
                continue
            cells = []
            for p in peers:
                t = e["impls"].get(p)
                cells.append(f"{t / ours:>21.2f}x" if t else f"{'-':>22}")
            gbps = e["bytes"] / ours / 1e9 if e["bytes"] else None
            triad = e["triad_gbps"]
            line = f"{case:<34} {ours * 1e6:>8.1f}us " + " ".join(cells)
            line += f" {gbps:>8.1f}" if gbps else f" {'-':>8}"
            line += f" {triad:>10.1f} {100 * gbps / triad:>7.0f}%" if gbps and triad else f" {'-':>10} {'-':>8}"
            write(line)
