"""csrc/compat/manylinux_2_28.h (CMake's DIFFRT_MANYLINUX_2_28, the portable wheel's build): code that uses
exp/log, shared_ptr and exception_ptr reference counts and std::allocator, compiled by this machine's GCC and glibc, needs
no glibc symbol newer than 2.28 and no libstdc++ symbol newer than GLIBCXX_3.4.24 (auditwheel's
manylinux_2_28 policy) and still runs. The whole library's wheel is checked the same way by .ci/run
(auditwheel repair --plat manylinux_2_28_x86_64)."""

import ctypes
import platform
import re
import shutil
import subprocess

import pytest

from tests._cpp_build import ROOT

COMPAT = ROOT / "csrc" / "compat"

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or shutil.which("g++") is None
    or shutil.which("objdump") is None,
    reason="needs glibc Linux, g++ and objdump")

SOURCE = r"""
#include <cmath>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
extern "C" __attribute__((visibility("default"))) double uses_everything(double x, long n) {
  std::shared_ptr<int> p = std::make_shared<int>(1);
  std::shared_ptr<int> q = p;                       // reference counts
  std::exception_ptr e;
  try {
    throw std::runtime_error("kept");
  } catch (...) {
    e = std::current_exception();
  }
  for (int i = 0; i < 1000; ++i) { std::exception_ptr copy = e; }  // copies add and drop references
  try {
    std::rethrow_exception(e);                     // the exception outlived every copy
  } catch (const std::runtime_error& err) {
    if (std::string(err.what()) != "kept") return -2.0;
  }
  double* a = nullptr;
  try {
    a = std::allocator<double>().allocate(size_t(n));  // n too large: bad_array_new_length
  } catch (const std::bad_array_new_length&) {
    return std::exp(x) + std::log(x) + double(q.use_count());
  }
  std::allocator<double>().deallocate(a, size_t(n));
  return -1.0;
}
"""


def _versions(library) -> dict:
    """{symbol: version} of the library's undefined dynamic symbols."""
    table = subprocess.run(["objdump", "-T", str(library)], capture_output=True, text=True, check=True).stdout
    return {m.group(2): m.group(1) for m in re.finditer(r"\*UND\*\s+\S+\s+\(?([A-Za-z]+_?[0-9.]*)\)?\s+(\S+)", table)}


def _too_new(version: str) -> bool:
    name, _, number = version.partition("_")  # "Base" (unversioned) has no number
    limit = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11)}.get(name)
    return limit is not None and tuple(int(x) for x in number.split(".")) > limit


def _build(tmp_path, name, compat: bool):
    """A shared library of SOURCE compiled as CMakeLists.txt compiles the extension (-O3, hidden
    visibility, -flto as pybind11_add_module adds); with compat, as DIFFRT_MANYLINUX_2_28 does: the header
    force-included, manylinux_2_28.cpp compiled without LTO, the export map."""
    source = tmp_path / "uses.cpp"
    source.write_text(SOURCE)
    flags = ["g++", "-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-flto=auto"]
    header = ["-include", str(COMPAT / "manylinux_2_28.h")] if compat else []
    objects = [tmp_path / f"{name}-uses.o"]
    subprocess.run([*flags, *header, "-c", str(source), "-o", str(objects[0])], check=True)
    link = [*flags, "-shared"]
    if compat:
        objects.append(tmp_path / "compat.o")
        subprocess.run([*flags, *header, "-fno-lto", "-c", str(COMPAT / "manylinux_2_28.cpp"), "-o", str(objects[1])],
                       check=True)
        (tmp_path / "uses.map").write_text("{ global: uses_everything; local: *; };")
        link.append(f"-Wl,--version-script={tmp_path / 'uses.map'}")
    library = tmp_path / f"{name}.so"
    subprocess.run([*link, *map(str, objects), "-o", str(library)], check=True)
    return library


def test_compat_build_needs_nothing_newer_than_manylinux_2_28_and_runs(tmp_path):
    library = _build(tmp_path, "compat", compat=True)
    versions = _versions(library)
    too_new = {s: v for s, v in versions.items() if _too_new(v)}
    assert not too_new, too_new
    unresolved = [s for s in versions if s.startswith("diffrt_")]  # a .symver binding that did not apply
    assert not unresolved, unresolved
    uses_everything = ctypes.CDLL(str(library)).uses_everything
    uses_everything.restype = ctypes.c_double
    uses_everything.argtypes = [ctypes.c_double, ctypes.c_long]
    assert uses_everything(1.0, 1 << 62) == pytest.approx(2.718281828459045 + 0.0 + 2.0)


def test_plain_build_shows_what_the_compat_header_removes(tmp_path):
    """The same code without the header: on a toolchain newer than manylinux_2_28's (glibc ≥ 2.29 or
    GCC ≥ 11) some of these symbols are too new, which is why the header exists."""
    versions = _versions(_build(tmp_path, "plain", compat=False))
    too_new = {s: v for s, v in versions.items() if _too_new(v)}
    if not too_new:
        pytest.skip("this toolchain is as old as manylinux_2_28's: nothing to remove")
    assert set(too_new) <= {"exp", "log", "__libc_single_threaded", "_ZSt28__throw_bad_array_new_lengthv",
                            "_ZNSt15__exception_ptr13exception_ptr9_M_addrefEv",
                            "_ZNSt15__exception_ptr13exception_ptr10_M_releaseEv"}, too_new
