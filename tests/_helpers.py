"""Shared test helpers: random inputs and dtype-derived tolerances."""

from pathlib import Path

import torch


def rand(gen, *shape, dtype=torch.float32, scale=1.0):
    """Standard normal values, rounded to ``dtype`` (the reference then sees exactly the kernel's inputs)."""
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def assert_close_to_ref(out, ref, *, dtype, scale, slack=0.0):
    """|out − ref| ≤ eps(dtype)·|ref| + 64·eps(float32)·scale + slack.

    The first term is the final rounding to the storage dtype (half an ulp, with margin); the second
    bounds float32 arithmetic on intermediate terms of magnitude ``scale``; ``slack`` is the known
    error of ``ref`` itself when it is not exact (e.g. a float32 peer against the float64 truth).
    """
    out, ref = out.double(), ref.double()
    tol = torch.finfo(dtype).eps * ref.abs() + 64 * torch.finfo(torch.float32).eps * scale + slack
    err = (out - ref).abs()
    bad = ~(err <= tol)  # NaN (an unwritten, poisoned element) counts as bad
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        detail = ", ".join(f"{tuple(i)}: got {out[tuple(i)].item():.7g} want {ref[tuple(i)].item():.7g}" for i in idx)
        raise AssertionError(f"{int(bad.sum())} of {bad.numel()} elements differ beyond tolerance; first: {detail}")



# The training configs of the shipped models (in the repository, beside the package; not in the wheel).
SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "python" / "shipped-models" / "configs").glob("*.toml"))
assert SHIPPED_CONFIGS, "python/shipped-models/configs holds the shipped models' training configs"
