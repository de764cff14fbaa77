"""Property tests: arbitrary shapes, batch sizes and per-sample scalars agree with the references."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffrt import ops
from tests._helpers import assert_close_to_ref

shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 40), st.integers(1, 40))
alphas = st.floats(0.02, 0.98)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    a_t=alphas,
    gap=st.floats(0.0, 0.5),
    eta=st.sampled_from([0.0, 0.3, 1.0]),
    w=st.one_of(st.none(), st.floats(-2.0, 12.0)),
    rescale=st.floats(0.0, 1.0),
    prediction_type=st.sampled_from(ops.PREDICTION_TYPES),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_ddim_step_any_shape(shape, a_t, gap, eta, w, rescale, prediction_type, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a_prev = min(a_t + gap, 0.999)
    n = shape[0]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    m = torch.randn((2 * n if w is not None else n, *shape[1:]), generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    kw = dict(eta=eta, noise=z, prediction_type=prediction_type, guidance_scale=w,
              guidance_rescale=rescale if w is not None else 0.0)
    out = ops.ddim_step(x, m, a_t, a_prev, **kw)
    ref = ops.ddim_step_ref(x.double(), m.double(), a_t, a_prev, **{**kw, "noise": z.double()})
    amp = 1 + 2 * abs(w or 0.0)
    denom = min(a_t, 1 - a_t) ** 0.5
    scale = (x.abs().max().item() + amp * m.abs().max().item() + z.abs().max().item()) / denom
    assert_close_to_ref(out, ref, dtype=dtype, scale=scale)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, shared_mask=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_mask_blend_any_shape(shape, shared_mask, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    mask = torch.rand((1 if shared_mask else shape[0], 1, *shape[2:]), generator=g)
    out = ops.mask_blend(mask, a, b)
    assert_close_to_ref(out, ops.mask_blend_ref(mask.double(), a.double(), b.double()), dtype=torch.float32, scale=8.0)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), draws=st.integers(1, 6), shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_diffedit_soft_mask_any_shape(batch, draws, shape, seed):
    g = torch.Generator().manual_seed(seed)
    full = (batch, draws, *shape[1:])
    q, r = torch.randn(full, generator=g), torch.randn(full, generator=g)
    out = ops.diffedit_mask(q, r, threshold=None)
    ref = ops.diffedit_mask_ref(q.double(), r.double(), threshold=None)
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=draws * shape[1])


