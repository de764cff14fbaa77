"""Backends: where an op can run, and why it cannot.

Each backend declares the devices and dtypes it handles; ``not_supported_reasons`` says why it
refuses an input. An op's implementation on one backend may also refuse inputs beyond device and
dtype (a shape limit, such as the CUDA attention kernel's largest head dim): it is then a
:class:`Limited` whose ``refuses(*inputs)`` gives the reason. With ``backend=None`` an op runs on
the first backend of ``AUTO_ORDER`` that implements it and accepts the inputs (the compiled kernels
first; the torch reference only for inputs no kernel handles, such as float64). Naming a backend
that cannot run is an error that carries the reasons — never a silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

import torch

from .. import _C

AUTO_ORDER = ("cuda", "triton", "cpu", "torch")


class UnsupportedBackendError(ValueError):
    """No backend (or not the requested one) can run an op on the given inputs."""


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    devices: Optional[Tuple[str, ...]]  # None: any device
    dtypes: Optional[Tuple[torch.dtype, ...]]  # None: any floating dtype
    unavailable: Optional[str] = None  # why this backend cannot run at all in this process
    # Devices it also runs on when asked for by name under TRITON_INTERPRET=1 (Triton's interpreter:
    # a test tool, far too slow to be chosen automatically).
    interpreter_devices: Tuple[str, ...] = ()

    def not_supported_reasons(self, device: torch.device, dtype: torch.dtype, requested: bool = False) -> list:
        reasons = []
        if self.unavailable:
            reasons.append(self.unavailable)
        interpreted = requested and device.type in self.interpreter_devices and os.environ.get("TRITON_INTERPRET") == "1"
        if self.devices is not None and device.type not in self.devices and not interpreted:
            also = f"; {', '.join(self.interpreter_devices)} only by name under TRITON_INTERPRET=1" if self.interpreter_devices else ""
            reasons.append(f"device '{device.type}' is not supported (supports {', '.join(self.devices)}{also})")
        if self.dtypes is not None and dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {str(dtype).replace('torch.', '')} is not supported (supports {names})")
        return reasons


def _cuda_unavailable_reason() -> Optional[str]:
    if not _C.build_info()["cuda"]:
        return "diffrt was built without CUDA kernels (no CUDA compiler at build time, or DIFFRT_CUDA=OFF)"
    if _C.cuda_device_count() == 0:
        return "no CUDA device is visible to this process"
    return None


def _triton_unavailable_reason() -> Optional[str]:
    # find_spec, not import: importing triton is slow and diffrt must import without it.
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'diffrt[triton]')"
    return None


BACKENDS: Mapping[str, Backend] = {
    "cuda": Backend(
        "cuda",
        "CUDA kernels on torch's current stream",
        ("cuda",),
        (torch.float32, torch.bfloat16, torch.float16),
        _cuda_unavailable_reason(),
    ),
    "triton": Backend(
        "triton",
        "Triton kernels (diffrt.kernels) on CUDA tensors",
        ("cuda",),
        (torch.float32, torch.bfloat16, torch.float16),
        _triton_unavailable_reason(),
        interpreter_devices=("cpu",),
    ),
    "cpu": Backend(
        "cpu",
        "C++ kernels, diffrt's thread pool + SIMD (instruction set chosen at run time)",
        ("cpu",),
        (torch.float32, torch.bfloat16),
    ),
    "torch": Backend("torch", "the readable torch reference (any device, any floating dtype)", None, None),
}


@dataclass(frozen=True)
class Limited:
    """An op's implementation on one backend that also refuses some inputs its device and dtype allow.
    ``refuses(*inputs)`` returns why it cannot take them (naming the limit), or None when it accepts them."""

    run: Callable
    refuses: Callable[..., Optional[str]]


def _candidates(op: str, impls: Mapping[str, Callable], device: torch.device, dtype: torch.dtype, requested):
    """The implementations that can take inputs of this device and dtype, in the order to try them, and
    why the others cannot; with a requested backend, that one only (or an error saying why not)."""
    if requested is not None:
        if requested not in BACKENDS:
            raise UnsupportedBackendError(
                f"{op}: unknown backend {requested!r} (expected one of {', '.join(BACKENDS)})"
            )
        if requested not in impls:
            raise UnsupportedBackendError(f"{op}: backend {requested!r} has no kernel for this op")
        reasons = BACKENDS[requested].not_supported_reasons(device, dtype, requested=True)
        if reasons:
            raise UnsupportedBackendError(f"{op}: backend {requested!r} cannot run these inputs: " + "; ".join(reasons))
        return ((requested, impls[requested]),), []
    found, why = [], []
    for name in AUTO_ORDER:
        if name not in impls:
            continue
        reasons = BACKENDS[name].not_supported_reasons(device, dtype)
        if reasons:
            why.append(f"{name}: " + "; ".join(reasons))
        else:
            found.append((name, impls[name]))
    return tuple(found), why


class _ShapeDependent:
    """A cached choice that depends on more than device and dtype: candidates to try with ``refuses``."""

    __slots__ = ("candidates", "why")

    def __init__(self, candidates, why):
        self.candidates, self.why = candidates, why


def dispatch(op: str, impls: Mapping[str, Callable], device: torch.device, dtype: torch.dtype, requested,
             inputs: tuple = ()) -> Callable:
    """The implementation of ``op`` to run for inputs on ``device`` with ``dtype`` (cached per input kind);
    ``inputs`` go to the ``refuses`` of :class:`Limited` implementations.

    Under ``torch.jit.trace`` (which OpenVINO's converter runs) the choice is the torch reference: a compiled
    kernel writes its output through a raw pointer, which a trace records as an unwritten tensor. (torch.compile
    sees the ops as ``torch.ops.diffrt`` custom ops, whose kernels run outside the trace; were a kernel reached
    while dynamo traces, the reference keeps the graph whole.)"""
    if requested is None and "torch" in impls and (torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return impls["torch"]
    key = (op, device, dtype, requested)
    chosen = _CHOSEN.get(key)
    if chosen is None:
        candidates, why = _candidates(op, impls, device, dtype, requested)
        if candidates and not isinstance(candidates[0][1], Limited):
            chosen = candidates[0][1]  # the first candidate takes any shape: the choice is final
        else:
            chosen = _ShapeDependent(candidates, why)
        _CHOSEN[key] = chosen
    if type(chosen) is not _ShapeDependent:
        return chosen
    why = list(chosen.why)
    for name, impl in chosen.candidates:
        reason = impl.refuses(*inputs) if isinstance(impl, Limited) else None
        if reason is None:
            return impl.run if isinstance(impl, Limited) else impl
        if requested is not None:
            raise UnsupportedBackendError(f"{op}: backend {requested!r} cannot run these inputs: {reason}")
        why.append(f"{name}: {reason}")
    raise UnsupportedBackendError(f"{op}: no backend can run these inputs ({' | '.join(why)})")


_CHOSEN: dict = {}


def backend_table() -> list:
    """(name, description, reason unavailable or None) for every backend, for diffrt.info."""
    return [(b.name, b.description, b.unavailable) for b in BACKENDS.values()]
