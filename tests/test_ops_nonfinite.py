"""NaN and ±inf in the inputs: on every CPU instruction set the kernels give the reference's answer —
the same NaN and ±inf elements, and the finite ones within the usual tolerance.

The semantics (documented on each op): ddim_step follows its reference formula element by element
(a NaN or inf reaches exactly the outputs the reference's arithmetic sends it to; a per-sample
statistic — guidance-rescale std, dynamic-threshold quantile — that is NaN makes the whole sample NaN;
the quantile is torch.quantile's, which is NaN when the row holds a NaN); mask_blend returns a or b
exactly where the mask is 1 or 0 (whatever the other holds) and m·a + (1−m)·b elsewhere; a DiffEdit
map of an image whose noise predictions hold a NaN is NaN everywhere, thresholded or not."""

import math

import pytest
import torch

from diffrt import ops
from tests._helpers import assert_close_to_ref, rand

DTYPES = [torch.float32, torch.bfloat16]


def assert_matches_nonfinite(out, ref, *, dtype, scale):
    """Same NaN and ±inf elements as the reference; the finite ones close to it."""
    out, ref = out.double(), ref.double()
    assert torch.equal(out.isnan(), ref.isnan()), (
        f"NaN at {out.isnan().nonzero()[:5].tolist()} (of {int(out.isnan().sum())}), "
        f"reference NaN at {ref.isnan().nonzero()[:5].tolist()} (of {int(ref.isnan().sum())})"
    )
    for sign in (1, -1):
        got, want = out == sign * math.inf, ref == sign * math.inf
        assert torch.equal(got, want), f"{'+' if sign > 0 else '-'}inf at {got.nonzero()[:5].tolist()}, reference at {want.nonzero()[:5].tolist()}"
    finite = ref.isfinite()
    assert_close_to_ref(out[finite], ref[finite], dtype=dtype, scale=scale)


def _poison(t, gen, value, count):
    """`count` elements of sample 0 set to `value` (sample 1 stays finite)."""
    flat = t[0].reshape(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[:count]
    flat[idx] = value
    return t


def _ddim_configs():
    guidances = [None, (7.5, 0.0), (7.5, 1.0), (0.5, 0.7)]
    clips = [{}, {"clip_sample_range": 1.0}, {"dynamic_threshold": 0.9}, {"dynamic_threshold": 1.0, "dynamic_threshold_max": 3.0},
             {"dynamic_threshold": 0.5}, {"dynamic_threshold": 0.7, "dynamic_threshold_max": 0.5}]
    configs = []
    for prediction_type in ops.PREDICTION_TYPES:
        for guidance in guidances:
            for clip in clips:
                for use_clipped in ([False, True] if clip else [False]):
                    kw = dict(clip, prediction_type=prediction_type, use_clipped_model_output=use_clipped)
                    if guidance is not None:
                        kw.update(guidance_scale=guidance[0], guidance_rescale=guidance[1])
                    kw["eta"] = 1.0 if len(configs) % 2 else 0.0
                    configs.append(kw)
    return configs


DDIM_CONFIGS = _ddim_configs()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "where, value, count",
    [("x", math.nan, 1), ("x", math.inf, 1), ("x", -math.inf, 11), ("x", math.inf, 12), ("uncond", math.inf, 1),
     ("cond", -math.inf, 12), ("cond", math.nan, 1), ("noise", math.inf, 1)],
)
def test_ddim_step_non_finite_inputs_match_reference(isa, gen, dtype, where, value, count):
    # 105 elements per sample: the quantile's position p·104 falls between two elements (p = 0.9, 0.7)
    # or on one (p = 0.5, 1); 11 or 12 infinities put the infinity just above or at that position.
    shape = (2, 3, 5, 7)
    x, z = rand(gen, *shape, dtype=dtype), rand(gen, *shape, dtype=dtype)
    m = rand(gen, 4, *shape[1:], dtype=dtype, scale=1.5)
    if where == "x":
        _poison(x, gen, value, count)
    elif where == "noise":
        _poison(z, gen, value, count)
    else:
        _poison(m[:2] if where == "uncond" else m[2:], gen, value, count)
    scale = (3 + 16 * 1.5 * 4) / math.sqrt(0.3 * 0.7)
    for kw in DDIM_CONFIGS:
        guided = "guidance_scale" in kw
        mo = m if guided else (m[2:] if where == "cond" else m[:2])
        kw = dict(kw, noise=z, return_x0=True)
        (out, x0) = ops.ddim_step(x, mo, 0.3, 0.5, **kw)
        (ref, ref_x0) = ops.ddim_step_ref(x.double(), mo.double(), 0.3, 0.5, **{**kw, "noise": z.double()})
        try:
            assert_matches_nonfinite(x0, ref_x0, dtype=dtype, scale=scale)
            assert_matches_nonfinite(out, ref, dtype=dtype, scale=scale)
        except AssertionError as e:
            options = {k: v for k, v in kw.items() if k != "noise"}
            raise AssertionError(f"{options}: {e}") from None


@pytest.mark.parametrize("dtype", DTYPES)
def test_cfg_combine_non_finite_inputs_match_reference(isa, gen, dtype):
    for value in (math.nan, math.inf, -math.inf):
        for rescale in (0.0, 0.7, 1.0):
            for w, half in ((0.5, 0), (7.5, 0), (7.5, 2)):  # half 0: ε_u poisoned, 2: ε_c
                m = rand(gen, 4, 3, 9, 9, dtype=dtype)
                _poison(m[half:], gen, value, 2)
                out = ops.cfg_combine(m, w, guidance_rescale=rescale)
                ref = ops.cfg_combine_ref(m.double(), w, guidance_rescale=rescale)
                assert_matches_nonfinite(out, ref, dtype=dtype, scale=(1 + 2 * w) * 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "shared"])
def test_mask_blend_binary_mask_selects_whatever_the_other_input_holds(isa, gen, dtype, mask_kind):
    a, b = rand(gen, 2, 3, 9, 11, dtype=dtype), rand(gen, 2, 3, 9, 11, dtype=dtype)
    for t in (a, b):
        for value in (math.nan, math.inf, -math.inf):
            flat = t.view(-1)
            flat[torch.randperm(flat.numel(), generator=gen)[:20]] = value
    select = torch.rand(1 if mask_kind == "shared" else 2, 1, 9, 11, generator=gen) > 0.5
    mask = select if mask_kind == "bool" else select.to(dtype)
    want = torch.where(select, a, b)
    torch.testing.assert_close(ops.mask_blend(mask, a, b), want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ops.mask_blend_ref(mask, a, b), want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_blend_soft_mask_non_finite_inputs_match_reference(isa, gen, dtype):
    a, b = rand(gen, 2, 3, 9, 11, dtype=dtype), rand(gen, 2, 3, 9, 11, dtype=dtype)
    mask = torch.rand(2, 1, 9, 11, generator=gen).to(dtype)
    mask.view(-1)[:30] = torch.tensor([0.0, 1.0, math.nan]).repeat(10).to(dtype)  # binary values and NaN among soft ones
    for t in (a, b):
        for value in (math.nan, math.inf, -math.inf):
            t.view(-1)[torch.randperm(t.numel(), generator=gen)[:15]] = value
    out = ops.mask_blend(mask, a, b)
    assert_matches_nonfinite(out, ops.mask_blend_ref(mask.double(), a.double(), b.double()), dtype=dtype, scale=8.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_diffedit_mask_non_finite_inputs_match_reference(isa, gen, dtype, value, threshold):
    q, r = rand(gen, 3, 4, 2, 13, 11, dtype=dtype), rand(gen, 3, 4, 2, 13, 11, dtype=dtype)
    q[0, 1, 0, 5, 5] = value  # image 0 only
    r[2, 3, 1].view(-1)[:3] = value  # image 2: several pixels
    out = ops.diffedit_mask(q, r, threshold=threshold)
    ref = ops.diffedit_mask_ref(q.double(), r.double(), threshold=threshold)
    if threshold is None:
        assert_matches_nonfinite(out, ref, dtype=torch.float32, scale=8.0)
    else:
        decided = ref.isnan() | ((ops.diffedit_mask_ref(q.double(), r.double(), threshold=None) - threshold).abs() > 1e-5)
        torch.testing.assert_close(out.double()[decided], ref[decided], rtol=0, atol=0, equal_nan=True)
    assert out[1].isfinite().all()  # an image without NaN is unaffected
    if value != value:  # NaN: that image's map is NaN everywhere, as the reference's
        assert out[0].isnan().all() and ref[0].isnan().all()
