"""``--backend compile | openvino`` of the image commands: every pipeline of ``diffrt demo`` (cascade generation
and inpainting, DiffEdit, Imagic, unCLIP) runs its denoisers on the backend and writes the images the eager run
writes, to the backend's float32 rounding (8-bit PNGs: at most a level apart on average)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffrt.cli import generate as image_commands
from diffrt.cli import build_parser
from diffrt.integrations.accelerate import AcceleratedDenoiser
from tests.test_cli_errors import build_bundle

# torch.compile's first import of Inductor warns of deprecated torch.jit APIs inside torch itself
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["demo", "--steps", "2", "--embedding-steps", "1", "--finetune-steps", "1", "--quiet"]


def run_demo(model: Path, out: Path, backend: str, cache: Path) -> list:
    """The demo in a process of its own (OpenVINO keeps a thread pool alive in the process that compiled)."""
    env = {**os.environ, "DIFFRT_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "diffrt.cli", *DEMO, "--model", str(model), "--out", str(out),
                           "--backend", backend], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return sorted(p.name for p in out.glob("*.png"))


@pytest.mark.parametrize("backend", ["openvino", pytest.param("compile", marks=pytest.mark.slow)])
def test_demo_runs_every_pipeline_on_the_backend(backend, tmp_path):
    if backend == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    model = build_bundle(tmp_path / "models")
    want = run_demo(model, tmp_path / "torch", "torch", tmp_path / "cache")
    got = run_demo(model, tmp_path / backend, backend, tmp_path / "cache")
    assert got == want and any(n.startswith("imagic") for n in got) and any(n.startswith("variations") for n in got)
    for name in want:
        a = np.asarray(Image.open(tmp_path / "torch" / name), dtype=np.float64)
        b = np.asarray(Image.open(tmp_path / backend / name), dtype=np.float64)
        assert a.shape == b.shape and np.abs(a - b).mean() <= 1.0, name


def test_backend_option_accelerates_the_denoisers_only(tmp_path):
    model = build_bundle(tmp_path / "models")
    parser_args = build_parser().parse_args(
        ["generate", "--prompt", "a red circle", "--model", str(model), "--out", str(tmp_path / "out"),
         "--backend", "compile"])
    bundle, _ = image_commands.prepare(parser_args)
    assert isinstance(bundle, image_commands.AcceleratedBundle) and bundle.backend == "compile"
    for denoiser, plain in ((bundle.unet("base"), bundle.plain.unet("base")), (bundle.prior, bundle.plain.prior)):
        assert isinstance(denoiser, AcceleratedDenoiser) and denoiser.model is plain and denoiser.config is plain.config
    assert bundle.unet("base") is bundle.unet("base")  # built once
    assert bundle.clip is bundle.plain.clip and bundle.has("decoder")
