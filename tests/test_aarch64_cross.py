"""diffrt's CPU kernels on aarch64: the check harness (csrc/dev/cpu_kernels_check.cpp) cross compiled with
aarch64-linux-gnu-g++ (statically linked) and run under qemu-aarch64 for each aarch64 ISA variant
CMakeLists.txt defines (scalar, neon, neon_bf16), the run-time choice on an emulated CPU with and without
the BF16 extension, and a CMake configure with csrc/dev/aarch64-linux-gnu.cmake that
compiles the CPU kernel libraries. Under emulation only correctness counts: the harness runs without its
speed measurements, and no timing means anything here.

Needs the Debian/Ubuntu packages g++-aarch64-linux-gnu and qemu-user (skips without them)."""

import shutil
import subprocess

import pytest

from tests._cpp_build import ROOT, build_harness, assert_harness_passes, isa_flags

CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"

pytestmark = [
    pytest.mark.skipif(shutil.which(CXX) is None or shutil.which(QEMU) is None,
                       reason="needs the aarch64 cross tools: apt-get install g++-aarch64-linux-gnu qemu-user"),
    pytest.mark.slow,  # ≈ 80 s of cross compiling and 20 s of emulation per ISA on two cores
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return build_harness(CXX, "aarch64", tmp_path_factory.mktemp("cpu_kernels_check_aarch64"), link_flags=["-static"])


@pytest.mark.parametrize("isa", list(isa_flags("aarch64")))
def test_harness_under_qemu_matches_cpp_reference(isa, harness):
    # qemu's default CPU ("max") has the BF16 extension: every variant is selectable.
    report = assert_harness_passes([QEMU, str(harness)], isa, timeout=900)
    assert "this CPU runs scalar neon neon_bf16;" in report
    path = "bfloat16 dot products" if isa == "neon_bf16" else "widened to float32"
    assert f"==== ISA {isa} (bfloat16 attention: {path})" in report


def test_cpu_without_bf16_runs_neon_and_refuses_neon_bf16(harness):
    """On a Cortex-A72 (Armv8.0: no BF16) isa.cpp's HWCAP2 check keeps neon_bf16 out: neon is the best
    variant, and asking for neon_bf16 is an error naming it."""
    cpu = [QEMU, "-cpu", "cortex-a72", str(harness)]
    report = assert_harness_passes(cpu, "neon", timeout=900)
    assert "this CPU runs scalar neon;" in report
    result = subprocess.run([*cpu, "--no-timing", "neon_bf16"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout
    assert "this CPU cannot run the neon_bf16 kernels (best: neon)" in result.stdout, result.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_cross_configure_compiles_kernel_libraries(tmp_path):
    """CMakeLists.txt detects aarch64 from the toolchain file and compiles one object library per aarch64
    ISA plus the dispatch library (the Python module itself needs an aarch64 Python: not built here)."""
    configure = ["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'csrc' / 'dev' / 'aarch64-linux-gnu.cmake'}",
                 "-DDIFFRT_PYTHON_MODULE=OFF", "-DDIFFRT_CUDA=OFF", "-DSKBUILD_PROJECT_VERSION=0.0.0"]
    result = subprocess.run(configure, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "diffrt CPU kernels for aarch64: scalar;neon;neon_bf16" in result.stdout, result.stdout
    result = subprocess.run(["cmake", "--build", str(tmp_path), "-j2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    objects = list(tmp_path.rglob("*.o"))
    for target in ("diffrt_cpu_scalar", "diffrt_cpu_neon", "diffrt_cpu_neon_bf16", "diffrt_cpu_dispatch"):
        built = [o for o in objects if f"{target}.dir" in str(o)]
        assert built, f"no objects for {target}"
        for o in built:
            file = subprocess.run(["file", str(o)], capture_output=True, text=True).stdout
            assert "aarch64" in file or "ARM aarch64" in file, file


def test_x86_isa_names_are_rejected_on_aarch64(harness):
    """isa.cpp on aarch64 knows only its own variants: an x86 name is an error naming the valid ones."""
    result = subprocess.run([QEMU, str(harness), "--no-timing", "avx2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unknown CPU ISA 'avx2' (expected scalar, neon or neon_bf16)" in result.stdout, result.stdout
