"""The benchmarks' 95 % intervals: Wilson's against the score test it inverts, the bootstrap against the
t interval on normal data, and both containing the estimate and shrinking with n."""

import math

import numpy as np
import pytest

from diffrt.eval import intervals as iv


def _score_test_interval(k: int, n: int) -> tuple:
    """The proportions p the two-sided score test at 5 % does not reject for k of n — Wilson's interval
    by definition — found on a fine float64 grid: |k/n − p| <= z·√(p(1 − p)/n)."""
    p = np.linspace(0, 1, 2_000_001)
    kept = p[np.abs(k / n - p) <= iv.Z95 * np.sqrt(p * (1 - p) / n)]
    return kept.min(), kept.max()


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (8, 10), (10, 10), (17, 60), (199, 200), (1, 1)])
def test_wilson_inverts_the_score_test(k, n):
    lo, hi = iv.wilson_interval(k, n)
    ref_lo, ref_hi = _score_test_interval(k, n)
    assert lo == pytest.approx(ref_lo, abs=2e-6) and hi == pytest.approx(ref_hi, abs=2e-6)
    assert 0 <= lo <= k / n <= hi <= 1


def test_wilson_shrinks_with_n_and_refuses_bad_counts():
    widths = [np.subtract(*iv.wilson_interval(3 * n // 10, n)[::-1]) for n in (10, 40, 160, 640)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    assert widths[-1] == pytest.approx(2 * iv.Z95 * math.sqrt(0.3 * 0.7 / 640), rel=0.02)  # the normal limit
    assert iv.wilson_interval(0, 0) is None
    for k, n in ((3, 2), (-1, 5), (1.5, 4), (True, 3)):
        with pytest.raises(ValueError, match="successes"):
            iv.wilson_interval(k, n)


def test_bootstrap_matches_the_t_interval_on_normal_data():
    """On normal data the bootstrap interval of the mean is close to mean ± 1.96·s/√n, contains the
    mean, shrinks like 1/√n and is reproducible."""
    rng = np.random.default_rng(7)
    widths = []
    for n in (50, 800):
        x = rng.normal(3.0, 2.0, size=n)
        lo, hi = iv.bootstrap_mean_interval(x)
        half = iv.Z95 * x.std(ddof=1) / math.sqrt(n)
        assert lo <= x.mean() <= hi
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
        assert iv.bootstrap_mean_interval(x) == [lo, hi]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # 1/√16 = 1/4, give or take resampling noise
    assert iv.bootstrap_mean_interval([]) is None
    assert iv.bootstrap_mean_interval([2.5] * 9) == [2.5, 2.5]
    with pytest.raises(ValueError, match="finite"):
        iv.bootstrap_mean_interval([1.0, math.nan])


def test_paired_difference_holds_its_mean_and_sees_pairs():
    rng = np.random.default_rng(3)
    a = rng.normal(size=300)
    b = a - 0.5 + rng.normal(scale=0.1, size=300)  # b tracks a: the pairs cancel most of the spread
    d = iv.paired_bootstrap_difference(a, b)
    assert d["n"] == 300 and d["ci95"][0] <= d["value"] <= d["ci95"][1]
    assert d["value"] == pytest.approx(np.mean(a - b))
    assert d["ci95"][1] - d["ci95"][0] < 0.05  # unpaired, the spread of a alone would give about 0.3
    same = iv.paired_bootstrap_difference(a, a)
    assert same["value"] == 0 and same["ci95"] == [0.0, 0.0]
    assert iv.paired_bootstrap_difference([], [])["ci95"] is None
    with pytest.raises(ValueError, match="one length"):
        iv.paired_bootstrap_difference([1.0, 2.0], [1.0])


def test_summaries_and_formatting():
    share = iv.proportion([True, False, True, True])
    assert share["value"] == 0.75 and share["n"] == 4 and share["ci95"] == iv.wilson_interval(3, 4)
    assert iv.proportion([]) == {"value": None, "n": 0, "ci95": None}
    m = iv.mean([1.0, 2.0, 6.0])
    assert m["value"] == 3.0 and m["ci95"][0] <= 3.0 <= m["ci95"][1]
    assert iv.format_interval(0.9, [0.85, 0.93412]) == "0.900 [0.850, 0.934]"
    assert iv.format_interval(None, None) == "–" and iv.format_interval(27.04, [25.0, 29.0], 1) == "27.0 [25.0, 29.0]"
