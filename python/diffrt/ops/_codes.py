"""The enum codes of _C's argument structs, read from _C (never re-declared here), and the dtype the
references compute in."""

import torch

from .. import _C

# torch dtype -> _C.DType; _C names its members after torch's dtypes (float16 runs on the CUDA kernels only).
DTYPES = {getattr(torch, name): code for name, code in _C.DType.__members__.items()}
# prediction_type -> _C.Prediction, in the kernels' order: ("epsilon", "v_prediction", "sample").
PREDICTIONS = dict(_C.Prediction.__members__)
PREDICTION_TYPES = tuple(PREDICTIONS)
ClipMode = _C.ClipMode


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The references compute in float32 at least (as the kernels do) and in float64 when given it."""
    return torch.promote_types(dtype, torch.float32)
