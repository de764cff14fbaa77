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


def _run_with_isa(isa, *args):
    env = {**os.environ, "DIFFRT_CPU_ISA": isa}
    return subprocess.run([sys.executable, "-W", "always::RuntimeWarning", *args], capture_output=True, text=True, env=env)


def _import_with_isa(isa):
    return _run_with_isa(isa, "-c", "from diffrt import _C; print('isa', _C.cpu_isa())")


def test_cpu_isa_env_override_is_honoured():
    result = _import_with_isa("scalar")
    assert result.returncode == 0 and "isa scalar" in result.stdout and "RuntimeWarning" not in result.stderr


@pytest.mark.parametrize("value", ["sse9", "AVX2 ", "avx512_bf16" if "avx512_bf16" not in _C.supported_cpu_isas() else "neon"])
def test_bad_cpu_isa_env_warns_and_falls_back_to_the_best(value):
    """A bad DIFFRT_CPU_ISA must not make `import diffrt` (and with it diffrt.info) fail: a RuntimeWarning
    names the value and the valid ones, and the best ISA this CPU supports runs."""
    best = _C.supported_cpu_isas()[-1]
    result = _import_with_isa(value)
    assert result.returncode == 0, result.stderr
    assert f"isa {best}" in result.stdout
    warning = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert warning and repr(value) in warning[0] and ", ".join(_C.build_info()["isas_compiled"]) in warning[0], result.stderr
    info = _run_with_isa(value, "-m", "diffrt.info")
    assert info.returncode == 0, info.stderr
    assert repr(value) in info.stdout and best in info.stdout, info.stdout


@pytest.mark.parametrize("name", _C.supported_cpu_isas())
def test_set_cpu_isa_switches(name):
    previous = _C.cpu_isa()
    try:
        _C.set_cpu_isa(name)
        assert _C.cpu_isa() == name
    finally:
        _C.set_cpu_isa(previous)
