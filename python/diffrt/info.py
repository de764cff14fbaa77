"""``python -m diffrt.info``: what this build of diffrt contains and what it will run on."""

from __future__ import annotations

import importlib.util
import platform

import torch

from . import _C, __version__
from .ops import AUTO_ORDER, backend_table
from .precision import BF16_ENV, cpu_bf16_support


def _bf16() -> dict:
    """Whether bfloat16 compute runs as asked on this CPU; a bad DIFFRT_CPU_BF16 is reported, not raised."""
    try:
        fast, reason = cpu_bf16_support()
    except ValueError as e:
        return {"fast": None, "reason": str(e)}
    return {"fast": fast, "reason": reason}


# What each CPU kernel table is, and which CPUs get it.
CPU_ISA_PATHS = {
    "scalar": "portable C++, auto-vectorised for the baseline instruction set",
    "avx2": "256-bit AVX2 + FMA; bfloat16 converted to float32 on load (no bf16 arithmetic)",
    "avx512": "512-bit AVX-512 F/BW/VL/DQ, float32 math; bfloat16 converted on load (for CPUs "
              "without AVX512-BF16: Skylake-X to Ice Lake)",
    "avx512_bf16": "512-bit AVX-512 with AVX512-BF16: attention's bfloat16 products on bf16 dot products",
    "neon": "128-bit Advanced SIMD (aarch64): attention in NEON intrinsics, the other kernels "
            "vectorised by the compiler; bfloat16 converted to float32 on load",
    "neon_bf16": "neon plus the Armv8.6 BF16 extension: attention's bfloat16 forward on BFDOT "
                 "(Graviton 3/4, Neoverse V1/V2/N2, Apple M2 and later)",
}


def _bf16_row(bf16: dict) -> str:
    if bf16["fast"] is None:
        return f"unknown: {bf16['reason']}"
    if bf16["fast"]:
        return f"yes, {bf16['reason']}; override: {BF16_ENV}=0|1"
    return f"no, {bf16['reason']}: bfloat16 compute runs in float32; override: {BF16_ENV}=1|0"


def collect() -> dict:
    build = _C.build_info()
    cuda_devices = _C.cuda_device_count() if build["cuda"] else 0
    return {
        "diffrt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compiler": build["compiler"],
        "cxx_flags": build["cxx_flags"].strip(),
        "thread_pool": build["threads"],
        "cpu_isas_compiled": build["isas_compiled"],
        "cpu_isas_supported": _C.supported_cpu_isas(),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isa_env_warning": _C.cpu_isa_env_warning(),
        "cpu_fast_bf16": _bf16(),
        "threads": torch.get_num_threads(),
        "cuda_kernels_built": build["cuda"],
        "cuda_runtime": build.get("cuda_runtime"),
        "cuda_devices": cuda_devices,
        "torch_cuda_available": torch.cuda.is_available(),
        "triton_installed": importlib.util.find_spec("triton") is not None,
        "backends": backend_table(),
    }


def main() -> None:
    info = collect()
    rows = [
        ("diffrt", info["diffrt"]),
        ("python / torch", f"{info['python']} / {info['torch']}"),
        ("compiler", f"gcc {info['compiler']}, flags '{info['cxx_flags']}'"),
        ("CPU kernels built", ", ".join(info["cpu_isas_compiled"])),
        ("CPU ISAs supported here", ", ".join(info["cpu_isas_supported"])),
        ("CPU ISA in use", f"{info['cpu_isa']}: {CPU_ISA_PATHS.get(info['cpu_isa'], '')}"),
        ("", f"(the widest this CPU supports unless lowered: DIFFRT_CPU_ISA={'|'.join(info['cpu_isas_compiled'])})"),
        *([("DIFFRT_CPU_ISA ignored", info["cpu_isa_env_warning"])] if info["cpu_isa_env_warning"] else []),
        ("CPU bf16 matmul/conv", _bf16_row(info["cpu_fast_bf16"])),
        ("threads", f"{info['threads']} (torch.get_num_threads(); kernels use the same count, on {info['thread_pool']})"),
        ("CUDA kernels built", f"{'yes, CUDA runtime ' + str(info['cuda_runtime']) if info['cuda_kernels_built'] else 'no'}"),
        ("CUDA devices", f"{info['cuda_devices']} (torch.cuda.is_available(): {info['torch_cuda_available']})"),
        ("Triton", "installed" if info["triton_installed"] else "not installed"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nbackends (automatic order: {' > '.join(AUTO_ORDER)})")
    for name, description, unavailable in info["backends"]:
        status = "available" if unavailable is None else f"unavailable: {unavailable}"
        print(f"  {name:<6} {description} [{status}]")


if __name__ == "__main__":
    main()
