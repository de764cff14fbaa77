"""The one way every op runs a compiled kernel: fill its argument struct by name
(``args = _C.DdimStepArgs(); args.eta = ...``), then ``run(kernel, args, tensor)`` on the tensor's device."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .. import _C


class Kernel:
    """One compiled op: ``cpu`` is ``_C.<name>(args, num_threads)``; ``cuda`` is
    ``_C.cuda_<name>(args, device, stream)`` in builds with CUDA kernels, else None."""

    __slots__ = ("name", "cpu", "cuda")

    def __init__(self, name: str):
        self.name = name
        self.cpu = getattr(_C, name)
        self.cuda: Optional[object] = getattr(_C, "cuda_" + name, None)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r})"


KERNELS: Dict[str, Kernel] = {}  # every kernel the ops run, by name


def kernel(name: str) -> Kernel:
    """The kernel ``_C.<name>`` (one Kernel per name)."""
    if name not in KERNELS:
        KERNELS[name] = Kernel(name)
    return KERNELS[name]


def run(kernel: Kernel, args, like: torch.Tensor) -> None:
    """Runs ``kernel`` on ``args`` where ``like`` lives: the CPU kernel with torch's thread count, or the
    CUDA kernel on like's device and torch's current stream there (it only enqueues the work)."""
    if like.is_cuda:
        if kernel.cuda is None:
            raise RuntimeError(f"{kernel.name}: this build of diffrt has no CUDA kernel for it")
        kernel.cuda(args, like.device.index, torch.cuda.current_stream(like.device).cuda_stream)
    else:
        kernel.cpu(args, torch.get_num_threads())
