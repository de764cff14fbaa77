"""95 % intervals for the benchmarks' measures: Wilson's score interval for a proportion (an
accuracy: how many items pass a check) and a percentile bootstrap for a mean (PSNR, IoU, a
distance), with a fixed resampling seed so that a report is reproducible."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(successes: int, n: int, z: float = Z95) -> Optional[List[float]]:
    """[lo, hi]: Wilson's score interval for a proportion of ``successes`` in ``n`` (None for n = 0).

    With p̂ = s/n: centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z·√(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n).
    Unlike the normal approximation it stays inside [0, 1] and is not empty at p̂ = 0 or 1.
    """
    if isinstance(n, bool) or int(n) != n or n < 0 or isinstance(successes, bool) or int(successes) != successes \
            or not 0 <= successes <= n:
        raise ValueError(f"need integers 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return None
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    # the interval holds p̂ (at p̂ = 1 its upper end is exactly 1); min/max keep float rounding from excluding it
    return [max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))]


def bootstrap_mean_interval(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = 0) -> Optional[List[float]]:
    """[lo, hi]: the 2.5 % and 97.5 % quantiles of the mean over ``resamples`` resamplings of
    ``values`` with replacement (None for no values; a point for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    if x.size == 0:
        return None
    if not np.isfinite(x).all():
        raise ValueError("values must be finite")
    picks = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    lo, hi = np.quantile(x[picks].mean(axis=1), [0.025, 0.975])
    return [float(min(lo, x.mean())), float(max(hi, x.mean()))]  # float rounding must not exclude the mean


def paired_bootstrap_difference(first: Sequence[float], second: Sequence[float], *,
                                resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Dict[str, Any]:
    """{"value": mean(first − second), "n", "ci95": its 95 % paired-bootstrap interval} over paired
    scores (one pair an item): the items are resampled with replacement, each keeping its pair, so
    the interval reflects the spread of the per-item differences."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"first and second must be 1-D and of one length, got shapes {a.shape} and {b.shape}")
    diff = a - b
    if diff.size == 0:
        return {"value": None, "n": 0, "ci95": None}
    value = float(diff.mean())
    picks = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    lo, hi = np.quantile(diff[picks].mean(axis=1), [0.025, 0.975])
    return {"value": value, "n": int(diff.size), "ci95": [float(min(lo, value)), float(max(hi, value))]}


def proportion(flags: Sequence[bool]) -> Dict[str, Any]:
    """{"value": the fraction of true flags (None for none), "n", "ci95": Wilson's interval}."""
    flags = [bool(f) for f in flags]
    k = sum(flags)
    return {"value": k / len(flags) if flags else None, "n": len(flags), "ci95": wilson_interval(k, len(flags))}


def mean(values: Sequence[float]) -> Dict[str, Any]:
    """{"value": the mean (None for no values), "n", "ci95": the bootstrap interval of the mean}."""
    values = [float(v) for v in values]
    return {"value": float(np.mean(values)) if values else None, "n": len(values),
            "ci95": bootstrap_mean_interval(values)}


def format_interval(value: Optional[float], ci: Optional[Sequence[float]], digits: int = 3) -> str:
    """'0.900 [0.851, 0.934]'; '–' without a value."""
    if value is None:
        return "–"
    if ci is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
