"""What the pipelines share: the one noise draw and the guidance arguments' checks and mapping."""

import math

import pytest
import torch

from diffrt import ConstantGuidance, OscillatingGuidance
from diffrt.pipelines._common import check_guidance, map_weights, needs_uncond, randn


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_noise_is_drawn_in_its_dtype_on_the_generators_device(dtype):
    """As diffusers' randn_tensor draws (a half-precision draw is not the float32 draw rounded), on
    the CPU without a generator (so torch.manual_seed gives the same noise on any device)."""
    got = randn((2, 37), torch.Generator().manual_seed(4), "cpu", dtype)
    assert got.dtype == dtype and torch.equal(got, torch.randn(2, 37, generator=torch.Generator().manual_seed(4),
                                                                  dtype=dtype))
    torch.manual_seed(5)
    unseeded = randn((3,), None, "cpu", dtype)
    torch.manual_seed(5)
    assert torch.equal(unseeded, torch.randn(3, dtype=dtype))


def test_check_guidance_names_the_argument():
    for ok in (None, 3, 7.5, torch.tensor([1.0, 2.0]), torch.tensor(2.0), ConstantGuidance(2.0)):
        assert check_guidance("w", ok) is ok
    cases = [(math.nan, ValueError, "sr_guidance must be a finite number"),
             (torch.tensor([1.0, math.inf]), ValueError, "sr_guidance must hold finite weights"),
             (torch.ones(2, 2), ValueError, "sr_guidance as a tensor must be a real 1-D tensor"),
             (torch.ones(2, dtype=torch.bool), ValueError, "real 1-D tensor"),
             (True, TypeError, "sr_guidance must be a number"), ("7.5", TypeError, "got str")]
    for value, error, words in cases:
        with pytest.raises(error, match=words):
            check_guidance("sr_guidance", value)


def test_needs_uncond_only_where_a_weight_may_differ_from_one():
    assert not needs_uncond(None) and not needs_uncond(1) and not needs_uncond(1.0)
    assert needs_uncond(0.0) and needs_uncond(3.0) and needs_uncond(torch.ones(2)) and needs_uncond(OscillatingGuidance())


def test_map_weights_reaches_tensors_given_directly_or_by_a_schedule():
    double = lambda w: 2 * w  # noqa: E731
    assert map_weights(3.0, double) == 3.0 and map_weights(None, double) is None
    assert torch.equal(map_weights(torch.tensor([1.0, 2.0]), double), torch.tensor([2.0, 4.0]))
    schedule = map_weights(lambda step, n: torch.full((2,), float(step)) if step else 5.0, double)
    assert schedule(0, 3) == 5.0 and torch.equal(schedule(2, 3), torch.tensor([4.0, 4.0]))
