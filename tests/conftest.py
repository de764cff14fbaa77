import math
import os

import pytest
import torch

# No GPU: Triton kernels run under Triton's interpreter on CPU tensors. The flag must be set before
# anything imports triton (diffusers does), or triton's own library functions stay compiled-only.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from diffrt import _C
from diffrt.ops import _alloc


@pytest.fixture(params=_C.supported_cpu_isas())
def isa(request):
    """Runs a test once per CPU kernel table this machine can execute (scalar, avx2, avx512, avx512_bf16)."""
    previous = _C.cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(previous)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every op output starts as NaN, so an element a kernel forgets to write fails the comparison."""
    real_empty, real_empty_like = _alloc.empty, _alloc.empty_like

    def poison(out):
        return out.fill_(math.nan) if out.is_floating_point() else out

    monkeypatch.setattr(_alloc, "empty", lambda shape, **kw: poison(real_empty(shape, **kw)))
    monkeypatch.setattr(_alloc, "empty_like", lambda t: poison(real_empty_like(t)))


@pytest.fixture
def gen():
    """A fresh, logged seed per test: random inputs differ between runs but a failure can be replayed."""
    seed = torch.randint(0, 2**31 - 1, ()).item()
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
