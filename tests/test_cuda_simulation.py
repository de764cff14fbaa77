"""The CUDA kernels run on the CPU: g++ compiles csrc/cuda/sampler_kernels.cu, attention_kernels.cu and norm_kernels.cu
unchanged against a host simulation of CUDA (tests/cuda_sim/cuda_shim.h: a fiber per CUDA thread,
__syncthreads as a barrier, shared memory, warp shuffles); tests/cuda_sim/sim_check.cpp runs every sampler
kernel on odd shapes, partial blocks, several samples and float32/bfloat16/float16 against the
double-precision reference, and tests/cuda_sim/sim_attention.cpp does the same for attention.

Each build runs under two schedules (lowest- and highest-numbered thread first at every switch), so a
missing barrier shows up whichever side of it would read too early; a second build lowers the number
of row blocks to 2, so that blocks also loop over several samples. Needs no GPU and no CUDA toolkit;
what it cannot show (speed, the device's own float rounding) is left to tests/test_cuda_ops.py."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "cuda_sim"
SOURCES = [ROOT / "csrc" / "cuda" / "sampler_kernels.cu", ROOT / "csrc" / "cuda" / "attention_kernels.cu",
           ROOT / "csrc" / "cuda" / "norm_kernels.cu", SIM / "cuda_shim.h", SIM / "sim_check.cpp",
           SIM / "sim_attention.cpp", SIM / "sim_norm.cpp"]
SCHEDULES = ("forward", "reverse")

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or not all(p.exists() for p in SOURCES), reason="needs g++ and the source tree"
)


def _build(source: str, binary: Path, *defines: str) -> Path:
    subprocess.run(
        ["g++", "-std=c++17", "-O1", "-Wall", "-Werror", "-DDIFFRT_CUDA_SIM", *defines, f"-I{ROOT / 'csrc'}",
         f"-I{SIM}", str(SIM / source), "-o", str(binary)],
        check=True,
    )
    return binary


def _run(binary: Path, schedule: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_SIM_SCHEDULE": schedule}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300, env=env)


def test_simulation_itself_is_faithful(tmp_path):
    """Shuffles, shared memory across a barrier, one block at a time, launch errors — and a thread that
    skips __syncthreads is reported as a deadlock instead of passing silently or hanging."""
    binary = _build("shim_selftest.cpp", tmp_path / "shim_selftest")
    for schedule in SCHEDULES:
        result = _run(binary, schedule)
        assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout + result.stderr
    result = _run(binary, "forward", "deadlock")
    assert result.returncode != 0 and "deadlock at a barrier" in result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("row_blocks", ["default", "2"])
def test_cuda_kernels_match_reference_under_host_simulation(tmp_path, row_blocks):
    defines = [] if row_blocks == "default" else [f"-DDIFFRT_CUDA_MAX_ROW_BLOCKS={row_blocks}"]
    binary = _build("sim_check.cpp", tmp_path / "sim_check", *defines)
    for schedule in SCHEDULES:
        result = _run(binary, schedule)
        assert result.returncode == 0 and "ALL OK" in result.stdout, f"[{schedule}]\n" + result.stdout[-5000:] + result.stderr


def test_cuda_attention_matches_reference_under_host_simulation(tmp_path):
    """csrc/cuda/attention_kernels.cu forward and backward (tests/cuda_sim/sim_attention.cpp): Lq, Lk in
    {1, 7, 33, 70}, head dims 32 … 256, padded keys and fully masked rows, strided inputs, float32 /
    bfloat16 / float16, against the double-precision reference csrc/dev/attention_reference.h."""
    binary = _build("sim_attention.cpp", tmp_path / "sim_attention")
    for schedule in SCHEDULES:
        result = _run(binary, schedule)
        report = f"[{schedule}]\n" + result.stdout[-5000:] + result.stderr
        assert result.returncode == 0 and "ALL OK" in result.stdout, report


@pytest.mark.parametrize("row_blocks", ["default", "2"])
def test_cuda_norm_kernels_match_reference_under_host_simulation(tmp_path, row_blocks):
    """csrc/cuda/norm_kernels.cu (tests/cuda_sim/sim_norm.cpp): group_norm NCHW / channels-last with and without
    SiLU and affine, groups of 1 and C, large means, layer_norm, geglu, timestep_embedding, timestep_mlp,
    float32 / bfloat16 / float16, against double-precision references; with 2 row blocks each block also loops
    over several rows."""
    defines = [] if row_blocks == "default" else [f"-DDIFFRT_CUDA_MAX_ROW_BLOCKS={row_blocks}"]
    binary = _build("sim_norm.cpp", tmp_path / "sim_norm", *defines)
    for schedule in SCHEDULES:
        result = _run(binary, schedule)
        assert result.returncode == 0 and "ALL OK" in result.stdout, f"[{schedule}]\n" + result.stdout[-5000:] + result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("harness", ["sim_check.cpp", "sim_attention.cpp", "sim_norm.cpp"])
def test_check_harness_also_compiles_for_the_gpu(tmp_path, harness):
    """The same cases build with nvcc into a GPU check-and-time harness (run it on a machine with a GPU)."""
    subprocess.run(
        ["nvcc", "-std=c++17", "-O1", "-arch=sm_80", f"-I{ROOT / 'csrc'}", "-x", "cu", str(SIM / harness),
         "-o", str(tmp_path / "cuda_check")],
        check=True,
    )
