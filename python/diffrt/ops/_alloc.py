"""Output allocation for every op, in one place (the tests poison it to catch unwritten elements)."""

import torch


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """A dense output shaped like the contiguous input ``t`` (empty_like: ~1 us cheaper than empty(shape))."""
    return torch.empty_like(t)


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)
