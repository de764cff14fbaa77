"""Zero-size inputs: every op returns its reference's answer (an empty tensor of the right shape) or
raises a ValueError naming the argument — never a crash. The C++ kernels themselves take empty rows
and batches (the Python entry points pass them through), so the calls that once crashed the process
run in a subprocess: a segfault fails the test instead of the suite."""

import subprocess
import sys
import textwrap

import pytest
import torch

from diffrt import ops


def _run_in_subprocess(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "call",
    [
        # quantile of an empty row (dynamic thresholding over 0 elements per sample)
        "ops.ddim_step(torch.randn(2, 0), torch.randn(2, 0), 0.3, 0.5, dynamic_threshold=0.995)",
        "ops.ddim_step(torch.randn(0, 3), torch.randn(0, 3), 0.3, 0.5, dynamic_threshold=0.995)",
        "ops.ddim_step(torch.randn(2, 0), torch.randn(4, 0), 0.3, 0.5, guidance_scale=3.0, guidance_rescale=0.7,"
        " dynamic_threshold=0.9)",
        # the same through the sampler, on a latent with no pixels
        "diffrt.ddim_sample(diffrt.FunctionDenoiser(lambda x, t, c: torch.zeros_like(x)), torch.randn(1, 4, 0, 0),"
        " diffrt.SamplingSchedule.ddim(diffrt.NoiseSchedule.make(), 4), dynamic_threshold=0.995, progress=False)",
    ],
)
def test_empty_rows_do_not_crash_the_process(call):
    result = _run_in_subprocess(
        f"""
        import torch, diffrt
        from diffrt import ops
        out = {call}
        print("shape", tuple(out.shape))
        """
    )
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert "shape (" in result.stdout


def _same_as_reference(out, ref):
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and o.dtype == r.dtype


DDIM_OPTIONS = [
    {},
    {"guidance_scale": 7.5},
    {"guidance_scale": 7.5, "guidance_rescale": 0.7},
    {"dynamic_threshold": 0.995},
    {"dynamic_threshold": 0.9, "dynamic_threshold_max": 2.0, "guidance_scale": 3.0, "use_clipped_model_output": True},
    {"clip_sample_range": 1.0, "eta": 1.0},
]


DDIM_EMPTY_SHAPES = [(0, 4, 8, 8), (2, 0, 8, 8), (2, 4, 0, 8), (1, 4, 0, 0), (3, 0)]
# Empty rows under dynamic thresholding once crashed the process: those run in the subprocess test above.
DDIM_EMPTY_CASES = [
    (shape, options) for shape in DDIM_EMPTY_SHAPES for options in DDIM_OPTIONS
    if not ("dynamic_threshold" in options and shape[0] > 0)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, options", DDIM_EMPTY_CASES)
def test_ddim_step_on_empty_tensors_returns_the_reference_answer(isa, dtype, shape, options):
    n = shape[0]
    x = torch.randn(shape).to(dtype)
    m = torch.randn(2 * n if "guidance_scale" in options else n, *shape[1:]).to(dtype)
    kw = dict(options, return_x0=True)
    if kw.get("eta"):
        kw["noise"] = torch.randn(shape).to(dtype)
    out = ops.ddim_step(x, m, 0.3, 0.5, **kw)
    ref = ops.ddim_step_ref(x, m, 0.3, 0.5, **kw)
    _same_as_reference(out, ref)
    _same_as_reference(ops.ddim_invert_step(x, m, 0.5, 0.3, guidance_scale=kw.get("guidance_scale")),
                       ops.ddim_invert_step_ref(x, m, 0.5, 0.3, guidance_scale=kw.get("guidance_scale")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (4, 0, 8, 8), (2, 4, 8, 0), (2, 0)])
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_cfg_combine_on_empty_tensors_returns_the_reference_answer(isa, dtype, shape, rescale):
    m = torch.randn(shape).to(dtype)
    out = ops.cfg_combine(m, 7.5, guidance_rescale=rescale)
    _same_as_reference(out, ops.cfg_combine_ref(m, 7.5, guidance_rescale=rescale))
    assert out.shape == (shape[0] // 2, *shape[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape, mask_shape",
    [((0, 3, 8, 8), (1, 1, 8, 8)), ((0, 3, 8, 8), (0, 1, 8, 8)), ((2, 0, 8, 8), (2, 1, 8, 8)),
     ((2, 3, 0, 8), (1, 1, 0, 8)), ((2, 3, 8, 0), (2, 1, 8, 0))],
)
def test_mask_blend_on_empty_tensors_returns_the_reference_answer(isa, dtype, shape, mask_shape):
    a, b = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    mask = torch.rand(mask_shape)
    out = ops.mask_blend(mask, a, b)
    _same_as_reference(out, ops.mask_blend_ref(mask, a, b))
    assert out.shape == shape


@pytest.mark.parametrize("shape", [(2, 3, 4, 0, 8), (0, 3, 4, 8, 8), (3, 4, 8, 0)])
def test_diffedit_mask_on_empty_images_returns_the_reference_answer(isa, shape):
    q, r = torch.randn(shape), torch.randn(shape)
    for threshold in (None, 0.5):
        out = ops.diffedit_mask(q, r, threshold=threshold)
        _same_as_reference(out, ops.diffedit_mask_ref(q, r, threshold=threshold))


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (3, 0, 8, 8), (2, 0, 4, 8, 8), (2, 3, 0, 8, 8)])
def test_diffedit_mask_without_draws_or_channels_raises(shape):
    """The map is a mean over noise draws and channels: with none of either it is undefined."""
    q, r = torch.randn(shape), torch.randn(shape)
    with pytest.raises(ValueError, match="eps_query"):
        ops.diffedit_mask(q, r)


def _conv_inputs(n, ci, cm, h, w, c, k):
    return torch.randn(n, ci, h, w), torch.rand(n, cm, h, w), torch.randn(c, ci + cm, k, k), torch.randn(c)


def test_downsample_cond_with_empty_batch_returns_the_reference_answer(isa):
    image, mask, weight, bias = _conv_inputs(0, 3, 1, 16, 16, 8, 4)
    out = ops.downsample_cond(image, mask, weight, bias, stride=4)
    _same_as_reference(out, ops.downsample_cond_ref(image, mask, weight, bias, stride=4))
    assert out.shape == (0, 8, 4, 4)
    buffer = torch.randn(0, 12, 4, 4)
    assert ops.downsample_cond(image, mask, weight, bias, stride=4, out=buffer, channel_offset=4) is buffer


@pytest.mark.parametrize(
    "sizes, name",
    [((2, 0, 0, 16, 16, 8, 4), "image"), ((2, 3, 1, 16, 16, 0, 4), "weight"), ((2, 3, 1, 0, 16, 8, 1), "image"),
     ((2, 3, 1, 16, 0, 8, 1), "image")],
)
def test_downsample_cond_without_channels_or_pixels_raises(sizes, name):
    image, mask, weight, bias = _conv_inputs(*sizes)
    with pytest.raises(ValueError, match=name):
        ops.downsample_cond(image, mask, weight, None, stride=1, padding=1)
