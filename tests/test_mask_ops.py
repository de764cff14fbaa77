"""mask_blend and diffedit_mask against their float64 references."""

import pytest
import torch

from diffrt import ops
from tests._helpers import assert_close_to_ref, rand

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7, 13), (3, 5, 31, 17), (2, 4, 128, 96)])
@pytest.mark.parametrize("mask_batch", ["per_sample", "shared"])
def test_mask_blend_soft_matches_reference(isa, gen, dtype, shape, mask_batch):
    a, b = rand(gen, *shape, dtype=dtype), rand(gen, *shape, dtype=dtype)
    mb = shape[0] if mask_batch == "per_sample" else 1
    mask = torch.rand(mb, 1, *shape[2:], generator=gen).to(dtype)
    out = ops.mask_blend(mask, a, b)
    ref = ops.mask_blend_ref(mask.double(), a.double(), b.double())
    assert_close_to_ref(out, ref, dtype=dtype, scale=2 * max(a.abs().max().item(), b.abs().max().item()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_blend_binary_mask_is_bit_exact(isa, gen, dtype):
    a = rand(gen, 2, 3, 40, 50, dtype=dtype, scale=1e4)
    b = rand(gen, 2, 3, 40, 50, dtype=dtype, scale=1e-4)
    mask = torch.rand(2, 1, 40, 50, generator=gen) > 0.5
    out = ops.mask_blend(mask, a, b)
    assert torch.equal(out, torch.where(mask, a, b))


def test_mask_blend_non_contiguous(isa, gen):
    a = rand(gen, 2, 3, 50, 40).transpose(2, 3)
    b = rand(gen, 2, 50, 40, 3).permute(0, 3, 2, 1)
    mask = torch.rand(2, 1, 50, 40, generator=gen).transpose(2, 3)
    out = ops.mask_blend(mask, a, b)
    assert_close_to_ref(out, ops.mask_blend_ref(mask.double(), a.double(), b.double()), dtype=torch.float32, scale=8.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10, 4, 7, 13), (2, 10, 4, 31, 17), (1, 3, 4, 64, 64)])
def test_diffedit_mask_soft_matches_reference(isa, gen, dtype, shape):
    q, r = rand(gen, *shape, dtype=dtype), rand(gen, *shape, dtype=dtype)
    out = ops.diffedit_mask(q, r, clamp_ratio=2.0, threshold=None)
    ref = ops.diffedit_mask_ref(q.double(), r.double(), clamp_ratio=2.0, threshold=None)
    batch = shape[0] if len(shape) == 5 else 1
    assert out.shape == (batch, 1, *shape[-2:]) and out.dtype == torch.float32
    # The map is a mean over n·C terms accumulated in float32.
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=shape[-3] * shape[-4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_diffedit_mask_binary_matches_reference_away_from_threshold(isa, gen, dtype):
    q = rand(gen, 3, 8, 4, 48, 40, dtype=dtype)
    r = q.clone()
    r[..., 10:30, 5:25] += rand(gen, 3, 8, 4, 20, 20, dtype=dtype, scale=3.0)  # an edited region
    out = ops.diffedit_mask(q, r, clamp_ratio=3.0, threshold=0.5)
    soft = ops.diffedit_mask_ref(q.double(), r.double(), clamp_ratio=3.0, threshold=None)
    ref = (soft > 0.5).double()
    decided = (soft - 0.5).abs() > 1e-5  # float32 vs float64 may disagree on values at the threshold
    assert torch.equal(out.double()[decided], ref[decided])
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert out[:, :, 10:30, 5:25].mean() > 0.9 and out[:, :, 35:, 30:].max() == 0  # finds the edit


def test_diffedit_mask_identical_predictions_give_empty_mask(isa, gen):
    q = rand(gen, 5, 4, 16, 16)
    assert torch.equal(ops.diffedit_mask(q, q.clone()), torch.zeros(1, 1, 16, 16))
    assert torch.equal(ops.diffedit_mask(q, q.clone(), threshold=None), torch.zeros(1, 1, 16, 16))


def test_diffedit_mask_feeds_mask_blend(gen):
    q, r = rand(gen, 2, 6, 4, 16, 16), rand(gen, 2, 6, 4, 16, 16)
    mask = ops.diffedit_mask(q, r)
    a, b = rand(gen, 2, 4, 16, 16), rand(gen, 2, 4, 16, 16)
    assert torch.equal(ops.mask_blend(mask, a, b), torch.where(mask.bool(), a, b))
