"""diffrt: a compiled diffusion sampling runtime."""

# torch first: it loads its bundled libgomp, which diffrt._C then shares (one OpenMP runtime).
import torch  # noqa: F401

from . import _C
from . import ops

__version__ = _C.__version__

__all__ = ["ops", "__version__"]
