"""``python -m diffrt.info``: what this build of diffrt contains and what it will run on."""

from __future__ import annotations

import importlib.util
import platform

import torch

from . import _C, __version__
from .ops import AUTO_ORDER, backend_table


def collect() -> dict:
    build = _C.build_info()
    cuda_devices = _C.cuda_device_count() if build["cuda"] else 0
    return {
        "diffrt": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "compiler": build["compiler"],
        "cxx_flags": build["cxx_flags"].strip(),
        "openmp": build["openmp"],
        "cpu_isas_compiled": build["isas_compiled"],
        "cpu_isas_supported": _C.supported_cpu_isas(),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isa_env_warning": _C.cpu_isa_env_warning(),
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
        ("compiler", f"gcc {info['compiler']}, flags '{info['cxx_flags']}', OpenMP {info['openmp']}"),
        ("CPU kernels built", ", ".join(info["cpu_isas_compiled"])),
        ("CPU ISAs supported here", ", ".join(info["cpu_isas_supported"])),
        ("CPU ISA in use", f"{info['cpu_isa']} (override: DIFFRT_CPU_ISA={'|'.join(info['cpu_isas_compiled'])})"),
        *([("DIFFRT_CPU_ISA ignored", info["cpu_isa_env_warning"])] if info["cpu_isa_env_warning"] else []),
        ("threads", f"{info['threads']} (torch.get_num_threads(); kernels use the same count)"),
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
