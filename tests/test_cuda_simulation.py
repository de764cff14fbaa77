"""The CUDA kernels run on the CPU: g++ compiles csrc/cuda/sampler_kernels.cu unchanged against a
host simulation of CUDA (tests/cuda_sim/cuda_shim.h: a std::thread per CUDA thread, __syncthreads as a
barrier, shared memory, warp shuffles) and tests/cuda_sim/sim_check.cpp runs every kernel on odd shapes,
partial blocks, several samples and float32/bfloat16/float16 against the double-precision reference.
Needs no GPU and no CUDA toolkit; what it cannot show (speed, the device's own float rounding) is left to
tests/test_cuda_ops.py on a machine with a GPU."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cuda_sim"
SOURCES = [ROOT / "csrc" / "cuda" / "sampler_kernels.cu", SIM / "cuda_shim.h", SIM / "sim_check.cpp"]

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or not all(p.exists() for p in SOURCES), reason="needs g++ and the source tree"
)


def test_cuda_kernels_match_reference_under_host_simulation(tmp_path):
    binary = tmp_path / "sim_check"
    subprocess.run(
        ["g++", "-std=c++17", "-O1", "-pthread", "-Wall", "-Werror", "-DDIFFRT_CUDA_SIM", f"-I{ROOT / 'csrc'}",
         f"-I{SIM}", str(SIM / "sim_check.cpp"), "-o", str(binary)],
        check=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout[-5000:] + result.stderr
