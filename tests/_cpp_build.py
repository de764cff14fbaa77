"""Builds the C++ check harness (csrc/dev/cpu_kernels_check.cpp) the way CMakeLists.txt builds the kernels:
each kernel source once per ISA variant of the target architecture, with that variant's flags (read from
CMakeLists.txt, the one place they are defined), linked with isa.cpp's run-time choice and the table
selectors. Plain compiler command lines: no CMake, Python module or torch needed. Shared by
test_cpp_harness.py (native) and test_aarch64_cross.py (cross compiled, run under qemu)."""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "csrc" / "dev" / "cpu_kernels_check.cpp"
CMAKE = (ROOT / "CMakeLists.txt").read_text()


def _cmake_list(pattern: str) -> list:
    match = re.search(pattern, CMAKE, re.S)
    assert match, f"CMakeLists.txt has no {pattern!r}"
    return match.group(1).split()


def isa_flags(arch: str) -> dict:
    """{isa: flags} of the ISA variants CMakeLists.txt compiles for `arch` (x86_64, aarch64), narrowest first."""
    flags: dict = {}
    for isa, value in re.findall(rf"set\(DIFFRT_ISA_FLAGS_{arch}_(\w+) ?(.*)\)", CMAKE):
        flags[isa] = []
        for word in value.replace('""', "").split():  # ${DIFFRT_ISA_FLAGS_<arch>_<other>} extends another's flags
            ref = re.fullmatch(rf"\$\{{DIFFRT_ISA_FLAGS_{arch}_(\w+)\}}", word)
            flags[isa] += flags[ref.group(1)] if ref else [word]
    return {isa: flags[isa] for isa in _cmake_list(rf"set\(DIFFRT_ISAS_{arch}\s([^)]*)\)")}


KERNEL_SOURCES = _cmake_list(r"set\(DIFFRT_CPU_KERNEL_SOURCES\s([^)]*)\)")
DISPATCH_SOURCES = _cmake_list(r"add_library\(diffrt_cpu_dispatch OBJECT\s([^)]*)\)")
# `#pragma omp simd` without an OpenMP runtime, as CMakeLists.txt builds; threads for diffrt's own pool.
COMMON_FLAGS = ["-std=c++17", "-fopenmp-simd", "-pthread", f"-I{ROOT / 'csrc'}"]


def build_harness(cxx: str, arch: str, out_dir: Path, link_flags=()) -> Path:
    """Compiles every kernel source for every ISA of `arch` (-O3, as CMakeLists.txt does) and links the
    harness; returns the binary. Two compiles at a time."""
    jobs = [[cxx, *COMMON_FLAGS, "-O3", f"-DDIFFRT_ISA={isa}", *flags, "-c", str(ROOT / src),
             "-o", str(out_dir / f"{isa}-{Path(src).stem}.o")]
            for isa, flags in isa_flags(arch).items() for src in KERNEL_SOURCES]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True), jobs))
    for cmd, result in zip(jobs, results):
        assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    binary = out_dir / f"cpu_kernels_check_{arch}"
    # As CMakeLists.txt's DIFFRT_DISPATCH_DEFINITIONS: the selectors list neon_bf16 when it is compiled.
    dispatch_defs = ["-DDIFFRT_WITH_NEON_BF16=1"] if "neon_bf16" in isa_flags(arch) else []
    link = [cxx, *COMMON_FLAGS, *dispatch_defs, "-O2", *link_flags, str(HARNESS), *(str(ROOT / s) for s in DISPATCH_SOURCES),
            *(job[-1] for job in jobs), "-o", str(binary)]
    result = subprocess.run(link, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(link)}\n{result.stderr}"
    return binary


def assert_harness_passes(command: list, isa: str, timeout: float) -> str:
    """Runs the harness on one ISA without the speed runs; returns its report (every check and max error)."""
    result = subprocess.run([*command, "--no-timing", isa], capture_output=True, text=True, timeout=timeout)
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "ALL OK" in result.stdout and f"==== ISA {isa}" in result.stdout, report
    return report
