"""The C++ check harness (csrc/dev/cpu_kernels_check.cpp) builds from the production kernel sources with
CMakeLists.txt's per-ISA flags and agrees with the double-precision C++ references — every CPU op
(sampler steps, attention forward and backward, norms, GEGLU, timestep embedding, downsample_cond) — on
each ISA this CPU runs, selected through isa.cpp as the bindings select it."""

import platform
import re
import shutil

import pytest

from diffrt import _C
from tests._cpp_build import HARNESS, ROOT, assert_harness_passes, build_harness, isa_flags

ARCH = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine())

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or not HARNESS.exists() or ARCH is None,
                                reason="needs g++, the source tree and an x86_64 or aarch64 host")

BEST = _C.supported_cpu_isas()[-1]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return build_harness("g++", ARCH, tmp_path_factory.mktemp("cpu_kernels_check"))


@pytest.mark.parametrize(
    "isa", [pytest.param(i, marks=() if i == BEST else pytest.mark.slow) for i in _C.supported_cpu_isas()]
)
def test_harness_matches_cpp_reference(isa, harness):
    assert_harness_passes([str(harness)], isa, timeout=600)


def test_harness_covers_every_kernel_table_entry():
    """Each function pointer of the CPU kernel tables (kernels.h, attention_kernels.h, downsample_kernels.h,
    norm.h) is called by the harness: a new op cannot go unchecked."""
    source = HARNESS.read_text()
    tables = {"cpu/kernels.h": "sampler_kernels", "cpu/attention_kernels.h": "attention_kernels",
              "cpu/downsample_kernels.h": "downsample_kernels", "norm.h": "norm_kernels"}
    for header, table in tables.items():
        body = re.search(r"struct \w+Kernels \{(.*?)\};", (ROOT / "csrc" / header).read_text(), re.S).group(1)
        for entry in re.findall(r"\(\*(\w+)\)", body):
            assert f"cpu::{table}().{entry}(" in source, f"{header}: {table}().{entry} is not checked by {HARNESS.name}"


def test_compiled_isas_match_cmake():
    """isa.cpp's list of this architecture's kernel sets mirrors CMakeLists.txt's (a set compiled but not
    selectable, or selectable but not linked, fails here)."""
    assert _C.build_info()["isas_compiled"] == list(isa_flags(ARCH))
