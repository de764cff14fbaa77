"""The C++ check harness (csrc/dev/sampler_kernels_check.cpp) builds from the production kernel
source and agrees with the double-precision C++ reference, for the ISA flags CMakeLists.txt uses."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from diffrt import _C

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "csrc" / "dev" / "sampler_kernels_check.cpp"


def _isa_flags() -> dict:
    """The per-ISA compiler flags, read from CMakeLists.txt (the one place they are defined)."""
    text = (ROOT / "CMakeLists.txt").read_text()
    flags: dict = {}
    for isa, value in re.findall(r"set\(DIFFRT_ISA_(\w+)_FLAGS ?(.*)\)", text):
        flags[isa] = []
        for word in value.replace('""', "").split():  # ${DIFFRT_ISA_<other>_FLAGS} extends another ISA's flags
            ref = re.fullmatch(r"\$\{DIFFRT_ISA_(\w+)_FLAGS\}", word)
            flags[isa] += flags[ref.group(1)] if ref else [word]
    return flags


pytestmark = pytest.mark.skipif(shutil.which("g++") is None or not HARNESS.exists(), reason="needs g++ and the source tree")

BEST = _C.supported_cpu_isas()[-1]


@pytest.mark.parametrize(
    "isa", [pytest.param(i, marks=() if i == BEST else pytest.mark.slow) for i in _C.supported_cpu_isas()]
)
def test_harness_matches_cpp_reference(isa, tmp_path):
    binary = tmp_path / f"check_{isa}"
    subprocess.run(
        ["g++", "-std=c++17", "-O2", "-fopenmp-simd", "-pthread", f"-I{ROOT / 'csrc'}", f"-DDIFFRT_ISA={isa}",
         *_isa_flags()[isa], str(HARNESS), str(ROOT / "csrc" / "cpu" / "thread_pool.cpp"), "-o", str(binary)],
        check=True,
    )
    result = subprocess.run([str(binary)], capture_output=True, text=True, env={"DIFFRT_CHECK_THREADS": "2"})
    assert result.returncode == 0 and "ALL OK" in result.stdout, result.stdout + result.stderr
