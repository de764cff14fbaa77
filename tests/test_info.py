"""`python -m diffrt.info` reports the build, and the ISA switch really changes the kernel table."""

import os
import subprocess
import sys

import pytest

from diffrt import _C


def test_info_runs_and_reports_the_build():
    out = subprocess.run([sys.executable, "-m", "diffrt.info"], check=True, capture_output=True, text=True).stdout
    for needle in ("diffrt", "CPU ISA in use", _C.cpu_isa(), "threads", "CUDA kernels built", "Triton", "backends"):
        assert needle in out, f"{needle!r} missing from diffrt.info output:\n{out}"


def _import_with_isa(isa):
    code = "from diffrt import _C; print(_C.cpu_isa())"
    env = {**os.environ, "DIFFRT_CPU_ISA": isa}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_cpu_isa_env_override_is_honoured_and_checked():
    assert _import_with_isa("scalar").stdout.strip() == "scalar"
    bad = _import_with_isa("sse9")
    assert bad.returncode != 0 and "unknown CPU ISA" in bad.stderr


@pytest.mark.parametrize("name", _C.supported_cpu_isas())
def test_set_cpu_isa_switches(name):
    previous = _C.cpu_isa()
    try:
        _C.set_cpu_isa(name)
        assert _C.cpu_isa() == name
    finally:
        _C.set_cpu_isa(previous)
