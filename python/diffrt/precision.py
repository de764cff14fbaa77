"""Does this CPU compute in bfloat16 fast, and what diffrt computes in when it does not.

torch runs bfloat16 matmuls and convolutions fast on a CPU only with bfloat16 arithmetic: AVX512-BF16 or
AMX-BF16 on x86, the BF16 extension on aarch64. Elsewhere (AVX2 laptops and desktops, Skylake-X to Ice
Lake servers, aarch64 without BF16) they fall to a scalar path about 10x slower than float32 (measured:
0.5-1 GFLOP/s against 38-88 GFLOP/s). There diffrt computes in float32 where bfloat16 compute was asked
for (weights stored in bfloat16 may stay so; the compute upcasts) and says so with a
:class:`Bfloat16ComputeWarning`. ``DIFFRT_CPU_BF16=1`` (or ``0``) forces the answer either way.
CUDA devices are never affected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from typing import Iterable, Iterator, Optional, Tuple

import torch

__all__ = ["BF16_ENV", "Bfloat16ComputeWarning", "compute_dtype", "cpu_bf16_support", "cpu_has_fast_bf16",
           "float32_compute"]

BF16_ENV = "DIFFRT_CPU_BF16"
_ENV_VALUES = {"1": True, "0": False}


class Bfloat16ComputeWarning(UserWarning):
    """bfloat16 compute was asked for on a CPU without fast bfloat16 arithmetic; diffrt computes in float32."""


def _env_override() -> Optional[bool]:
    """The value of DIFFRT_CPU_BF16 (unset or empty: None); anything but 0 or 1 is an error."""
    value = os.environ.get(BF16_ENV, "")
    if value == "":
        return None
    if value not in _ENV_VALUES:
        raise ValueError(f"{BF16_ENV} must be 1 (treat this CPU as having fast bfloat16 arithmetic) or 0 "
                         f"(compute in float32 where bfloat16 is asked for), got {value!r}")
    return _ENV_VALUES[value]


def _proc_cpuinfo_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (x86 'flags', aarch64 'Features'); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def _hardware_bf16() -> Tuple[bool, str]:
    """(fast bfloat16 matmul/conv, why) from the hardware alone: torch.cpu.get_capabilities() where this
    torch has it (2.10 and later), else /proc/cpuinfo."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        caps = dict(get_capabilities())
        source = "torch.cpu.get_capabilities()"
        arch = str(caps.get("architecture", platform.machine()))
    else:
        flags = _proc_cpuinfo_flags()  # cpuinfo's names: avx512_bf16, amx_bf16 (x86), bf16 (aarch64)
        caps = {name: name in flags for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")}
        source = "/proc/cpuinfo"
        arch = platform.machine()
    arch = arch.lower()
    if arch in ("x86_64", "amd64", "x86", "i386", "i686"):
        found = [name for key, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if caps.get(key)]
        if found:
            return True, f"{' and '.join(found)} ({source})"
        return False, f"no AVX512-BF16 or AMX-BF16 on this {arch} CPU ({source})"
    if arch in ("aarch64", "arm64"):
        if caps.get("bf16") or caps.get("sve_bf16"):
            return True, f"the Arm BF16 extension ({source})"
        return False, f"no BF16 extension on this {arch} CPU ({source})"
    return False, f"no known bfloat16 arithmetic on a {arch or 'unknown'} CPU"


def cpu_bf16_support() -> Tuple[bool, str]:
    """(does this CPU run bfloat16 matmuls and convolutions fast, the reason). True only with AVX512-BF16
    or AMX-BF16 (x86) or the BF16 extension (aarch64), unless DIFFRT_CPU_BF16=1|0 forces the answer;
    any other value of DIFFRT_CPU_BF16 raises ValueError."""
    forced = _env_override()
    if forced is not None:
        return forced, f"forced by {BF16_ENV}={int(forced)}"
    return _hardware_bf16()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls and convolutions fast (see :func:`cpu_bf16_support`)."""
    return cpu_bf16_support()[0]


def _is_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def _warn(what: str, reason: str, stacklevel: int) -> None:
    warnings.warn(f"{what}: bfloat16 compute on a CPU without fast bfloat16 arithmetic ({reason}) runs about 10x "
                  f"slower than float32, so diffrt computes in float32 instead; set {BF16_ENV}=1 to compute in "
                  f"bfloat16 anyway", Bfloat16ComputeWarning, stacklevel=stacklevel + 1)


def compute_dtype(dtype: torch.dtype, device, *, what: str, stacklevel: int = 2) -> torch.dtype:
    """The dtype to compute in when ``dtype`` is asked for on ``device``: float32 in place of bfloat16 on a
    CPU without fast bfloat16 arithmetic (with one :class:`Bfloat16ComputeWarning` naming ``what``),
    ``dtype`` itself otherwise."""
    if dtype != torch.bfloat16 or not _is_cpu(device):
        return dtype
    fast, reason = cpu_bf16_support()
    if fast:
        return dtype
    _warn(what, reason, stacklevel + 1)
    return torch.float32


def _bf16_cpu_tensors(modules: Iterable[torch.nn.Module]):
    """(table, name, tensor) for every bfloat16 CPU parameter and buffer of the modules, each once."""
    seen, found = set(), []
    for module in modules:
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, t in table.items():
                    if t is not None and t.dtype == torch.bfloat16 and t.device.type == "cpu" and id(t) not in seen:
                        seen.add(id(t))
                        found.append((table, name, t))
    return found


@contextlib.contextmanager
def float32_compute(modules: Iterable[object], *, what: str, stacklevel: int = 3) -> Iterator[None]:
    """Inside: the bfloat16 CPU weights (and their gradients) of ``modules`` — nn.Modules or bound methods
    of one; anything else is skipped — are float32, so the models compute in float32 on a CPU without
    fast bfloat16 arithmetic, with one :class:`Bfloat16ComputeWarning`. On exit they are bfloat16 again:
    the very tensors that were there when unchanged, the new values rounded to bfloat16 when trained
    inside. The Parameter objects stay the same ones. Nothing happens on a CPU with fast bfloat16, on
    CUDA, or when no weight is bfloat16."""
    mods = []
    for m in modules:
        m = getattr(m, "__self__", m)  # a bound method such as clip.encode_image: its module
        if isinstance(m, torch.nn.Module):
            mods.append(m)
    tensors = _bf16_cpu_tensors(mods)
    if not tensors:
        yield
        return
    fast, reason = cpu_bf16_support()
    if fast:
        yield
        return
    _warn(what, reason, stacklevel)
    saved = []  # (table, name, the tensor, its bfloat16 data)
    with torch.no_grad():
        for table, name, t in tensors:
            if isinstance(t, torch.nn.Parameter):
                saved.append((table, name, t, t.data))
                t.data = t.data.float()
                if t.grad is not None:  # gradients accumulate in the parameter's dtype
                    t.grad = t.grad.float()
            else:
                saved.append((table, name, t, t))
                table[name] = t.float()
    try:
        yield
    finally:
        with torch.no_grad():
            for table, name, t, data in saved:
                current = t.data if isinstance(t, torch.nn.Parameter) else table.get(name)
                if not isinstance(current, torch.Tensor) or current.dtype != torch.float32:
                    continue  # replaced inside by something else: left as it is
                rounded = current.to(torch.bfloat16)
                kept = data if torch.equal(rounded, data) else rounded  # unchanged: the very tensor
                if isinstance(t, torch.nn.Parameter):
                    t.data = kept
                    if t.grad is not None and t.grad.dtype != torch.bfloat16:
                        t.grad = t.grad.to(torch.bfloat16)
                else:
                    table[name] = kept
