"""diffrt.ops on CUDA tensors against the float64 references: the cases of test_sampling_ops.py and
test_mask_ops.py, plus float16, torch's current stream and the device guard. Skipped without a GPU
(and a diffrt built with CUDA kernels); what runs everywhere is how diffrt behaves without one."""

import os
import subprocess
import sys

import pytest
import torch

from diffrt import _C, ops
from tests._helpers import assert_close_to_ref, rand
from tests.test_sampling_ops import SHAPES, _scale


def _cuda_missing() -> str:
    if not _C.build_info()["cuda"]:
        return "diffrt was built without CUDA kernels"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device (torch.cuda.is_available() is False)"
    if _C.cuda_device_count() == 0:
        return "diffrt's CUDA runtime sees no device"
    return ""


MISSING = _cuda_missing()
needs_gpu = pytest.mark.skipif(bool(MISSING), reason=f"needs a CUDA GPU: {MISSING}")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CUDA = "cuda"


def _f64(v):
    return v.detach().cpu().double() if isinstance(v, torch.Tensor) else v


def _cuda(gen, *shape, dtype=torch.float32, scale=1.0):
    return rand(gen, *shape, dtype=dtype, scale=scale).to(CUDA)


def _ddim_both(sample, model_output, alpha_t, alpha_prev, **kw):
    """The CUDA kernel (insisted on) and the float64 reference on the CPU."""
    out = ops.ddim_step(sample, model_output, alpha_t, alpha_prev, backend="cuda", **kw)
    torch.cuda.synchronize()
    ref = ops.ddim_step_ref(_f64(sample), _f64(model_output), _f64(alpha_t), _f64(alpha_prev),
                            **{k: _f64(v) for k, v in kw.items()})
    return out, ref


# ---- everywhere: a machine without a usable GPU -------------------------------------------------


@pytest.mark.skipif(not MISSING, reason="a CUDA GPU is present")
def test_cuda_backend_refuses_with_its_reason():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ops.UnsupportedBackendError, match="backend 'cuda' cannot run these inputs: .*(CUDA|device)"):
        ops.ddim_step(x, x, 0.3, 0.5, backend="cuda")
    assert ops.BACKENDS["cuda"].unavailable


def test_float16_is_cuda_only_among_the_kernels(gen):
    x = rand(gen, 2, 3, 5, 5, dtype=torch.float16)
    with pytest.raises(ops.UnsupportedBackendError, match="dtype float16 is not supported"):
        ops.ddim_step(x, x, 0.4, 0.6, backend="cpu")
    # Without a backend request a CPU float16 tensor goes to the torch reference.
    torch.testing.assert_close(ops.ddim_step(x, x, 0.4, 0.6), ops.ddim_step_ref(x, x, 0.4, 0.6), rtol=0, atol=0)


def test_import_and_cpu_ops_without_any_visible_gpu():
    code = (
        "import torch, diffrt; from diffrt import ops; x = torch.randn(1, 2, 3, 3); "
        "print(ops.ddim_step(x, x, 0.3, 0.5).shape, ops.BACKENDS['cuda'].unavailable is not None)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True"


# ---- on a GPU -----------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("guided", [False, True])
def test_ddim_step_matches_reference(gen, dtype, shape, prediction_type, guided):
    n = shape[0]
    x = _cuda(gen, *shape, dtype=dtype)
    m = _cuda(gen, 2 * n if guided else n, *shape[1:], dtype=dtype)
    w = 7.5 if guided else None
    out, ref = _ddim_both(x, m, 0.35, 0.62, prediction_type=prediction_type, guidance_scale=w)
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == x.shape
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_scale(x, m, 0.35, w))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_noise_and_x0(gen, dtype, eta):
    shape = (3, 5, 31, 17)
    x, m, z = (_cuda(gen, *shape, dtype=dtype) for _ in range(3))
    (out, x0), (ref, ref_x0) = _ddim_both(x, m, 0.2, 0.5, eta=eta, noise=z, return_x0=True)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_scale(x, m, 0.2, None))
    assert_close_to_ref(x0.cpu(), ref_x0, dtype=dtype, scale=_scale(x, m, 0.2, None))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize(
    "clip",
    [{"clip_sample_range": 1.0}, {"dynamic_threshold": 0.9}, {"dynamic_threshold": 0.995, "dynamic_threshold_max": 1.7},
     {"dynamic_threshold": 1.0}],
)
def test_ddim_step_clipping_and_thresholding(gen, dtype, use_clipped, clip):
    shape = (3, 5, 31, 17)
    x = _cuda(gen, *shape, dtype=dtype)
    m = _cuda(gen, 2 * shape[0], *shape[1:], dtype=dtype, scale=1.5)
    (out, x0), (ref, ref_x0) = _ddim_both(
        x, m, 0.1, 0.3, guidance_scale=3.0, use_clipped_model_output=use_clipped, return_x0=True, **clip
    )
    scale = _scale(x, m, 0.1, 3.0)
    assert_close_to_ref(x0.cpu(), ref_x0, dtype=dtype, scale=scale)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=scale)
    assert x0.abs().max() <= clip.get("clip_sample_range", 1.0)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_ddim_step_per_sample_alphas_guidance_and_rescale(gen, dtype):
    shape = (4, 3, 9, 11)
    x = _cuda(gen, *shape, dtype=dtype)
    m = _cuda(gen, 8, *shape[1:], dtype=dtype)
    a_t = torch.tensor([0.1, 0.3, 0.5, 0.9])
    a_prev = torch.tensor([0.2, 0.35, 0.9, 0.95])
    w = torch.tensor([1.0, 3.0, 7.5, 0.0])
    out, ref = _ddim_both(x, m, a_t, a_prev, guidance_scale=w, guidance_rescale=0.7)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_scale(x, m, a_t, w))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_ddim_step_guidance_rescale(gen, dtype, rescale):
    shape = (2, 4, 64, 64)
    x = _cuda(gen, *shape, dtype=dtype)
    m = _cuda(gen, 4, *shape[1:], dtype=dtype)
    out, ref = _ddim_both(x, m, 0.5, 0.7, guidance_scale=7.5, guidance_rescale=rescale, prediction_type="v_prediction")
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_scale(x, m, 0.5, 7.5))


@needs_gpu
def test_ddim_step_non_contiguous_inputs(gen):
    x = _cuda(gen, 3, 5, 17, 31).transpose(2, 3)
    m = _cuda(gen, 6, 5, 31, 34)[..., ::2]
    z = _cuda(gen, 3, 17, 5, 31).permute(0, 2, 3, 1)
    assert not (x.is_contiguous() or m.is_contiguous() or z.is_contiguous())
    out, ref = _ddim_both(x, m, 0.3, 0.6, guidance_scale=4.0, eta=1.0, noise=z)
    assert_close_to_ref(out.cpu(), ref, dtype=torch.float32, scale=_scale(x, m, 0.3, 4.0))


@needs_gpu
def test_ddim_step_large_batch_dynamic_threshold(gen):
    shape = (8, 3, 96, 80)
    x = _cuda(gen, *shape)
    m = _cuda(gen, 16, *shape[1:])
    out, ref = _ddim_both(x, m, 0.05, 0.2, guidance_scale=5.0, dynamic_threshold=0.95, prediction_type="sample")
    assert_close_to_ref(out.cpu(), ref, dtype=torch.float32, scale=_scale(x, m, 0.05, 5.0))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
def test_ddim_invert_step_matches_reference(gen, dtype, prediction_type):
    shape = (2, 4, 33, 29)
    x = _cuda(gen, *shape, dtype=dtype)
    m = _cuda(gen, 4, *shape[1:], dtype=dtype)
    out = ops.ddim_invert_step(x, m, 0.8, 0.6, prediction_type=prediction_type, guidance_scale=2.0, backend="cuda")
    ref = ops.ddim_invert_step_ref(_f64(x), _f64(m), 0.8, 0.6, prediction_type=prediction_type, guidance_scale=2.0)
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=_scale(x, m, 0.6, 2.0))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.5])
def test_cfg_combine_matches_reference(gen, dtype, rescale):
    for shape in SHAPES:
        m = _cuda(gen, 2 * shape[0], *shape[1:], dtype=dtype)
        w = torch.linspace(0.0, 9.0, shape[0])
        out = ops.cfg_combine(m, w, guidance_rescale=rescale, backend="cuda")
        ref = ops.cfg_combine_ref(_f64(m), w.double(), guidance_rescale=rescale)
        assert out.shape == (shape[0], *shape[1:])
        assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=(1 + 2 * 9.0) * m.abs().max().item())


@needs_gpu
def test_cfg_combine_constant_guided_output_is_left_unscaled():
    m = torch.ones(2, 3, 4, 4, device=CUDA)
    torch.testing.assert_close(ops.cfg_combine(m, 5.0, guidance_rescale=0.7, backend="cuda").cpu(), torch.ones(1, 3, 4, 4))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 7, 13), (3, 5, 31, 17), (2, 4, 128, 96)])
@pytest.mark.parametrize("mask_batch", ["per_sample", "shared"])
def test_mask_blend_soft_matches_reference(gen, dtype, shape, mask_batch):
    a, b = _cuda(gen, *shape, dtype=dtype), _cuda(gen, *shape, dtype=dtype)
    mb = shape[0] if mask_batch == "per_sample" else 1
    mask = torch.rand(mb, 1, *shape[2:], generator=gen).to(dtype).to(CUDA)
    out = ops.mask_blend(mask, a, b, backend="cuda")
    ref = ops.mask_blend_ref(_f64(mask), _f64(a), _f64(b))
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=2 * max(a.abs().max().item(), b.abs().max().item()))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_blend_binary_mask_is_bit_exact(gen, dtype):
    a = _cuda(gen, 2, 3, 40, 50, dtype=dtype, scale=1e4 if dtype != torch.float16 else 1e3)
    b = _cuda(gen, 2, 3, 40, 50, dtype=dtype, scale=1e-4)
    mask = (torch.rand(2, 1, 40, 50, generator=gen) > 0.5).to(CUDA)
    assert torch.equal(ops.mask_blend(mask, a, b, backend="cuda"), torch.where(mask, a, b))


@needs_gpu
def test_mask_blend_non_contiguous(gen):
    a = _cuda(gen, 2, 3, 50, 40).transpose(2, 3)
    b = _cuda(gen, 2, 50, 40, 3).permute(0, 3, 2, 1)
    mask = torch.rand(2, 1, 50, 40, generator=gen).to(CUDA).transpose(2, 3)
    out = ops.mask_blend(mask, a, b, backend="cuda")
    assert_close_to_ref(out.cpu(), ops.mask_blend_ref(_f64(mask), _f64(a), _f64(b)), dtype=torch.float32, scale=8.0)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(10, 4, 7, 13), (2, 10, 4, 31, 17), (1, 3, 4, 64, 64)])
def test_diffedit_mask_soft_matches_reference(gen, dtype, shape):
    q, r = _cuda(gen, *shape, dtype=dtype), _cuda(gen, *shape, dtype=dtype)
    out = ops.diffedit_mask(q, r, clamp_ratio=2.0, threshold=None, backend="cuda")
    ref = ops.diffedit_mask_ref(_f64(q), _f64(r), clamp_ratio=2.0, threshold=None)
    batch = shape[0] if len(shape) == 5 else 1
    assert out.shape == (batch, 1, *shape[-2:]) and out.dtype == torch.float32
    assert_close_to_ref(out.cpu(), ref, dtype=torch.float32, scale=shape[-3] * shape[-4])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_diffedit_mask_binary_matches_reference_away_from_threshold(gen, dtype):
    q = rand(gen, 3, 8, 4, 48, 40, dtype=dtype)
    r = q.clone()
    r[..., 10:30, 5:25] += rand(gen, 3, 8, 4, 20, 20, dtype=dtype, scale=3.0)
    out = ops.diffedit_mask(q.to(CUDA), r.to(CUDA), clamp_ratio=3.0, threshold=0.5, backend="cuda").cpu()
    soft = ops.diffedit_mask_ref(q.double(), r.double(), clamp_ratio=3.0, threshold=None)
    decided = (soft - 0.5).abs() > 1e-5
    assert torch.equal(out.double()[decided], (soft > 0.5).double()[decided])
    assert set(out.unique().tolist()) <= {0.0, 1.0}


@needs_gpu
def test_diffedit_mask_identical_predictions_give_empty_mask(gen):
    q = _cuda(gen, 5, 4, 16, 16)
    assert torch.equal(ops.diffedit_mask(q, q.clone(), backend="cuda").cpu(), torch.zeros(1, 1, 16, 16))


@needs_gpu
def test_runs_on_torchs_current_stream(gen):
    """Work is enqueued on the caller's current stream: ordered after earlier work on it."""
    x = _cuda(gen, 2, 4, 64, 64)
    m = _cuda(gen, 4, 4, 64, 64)
    expected = ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=3.0, guidance_rescale=0.5, dynamic_threshold=0.9)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        scaled = m * 1.0  # queued on `stream` just before the op reads it
        got = ops.ddim_step(x, scaled, 0.3, 0.5, guidance_scale=3.0, guidance_rescale=0.5, dynamic_threshold=0.9)
    stream.synchronize()
    assert torch.equal(got, expected)


@needs_gpu
def test_results_are_deterministic(gen):
    x = _cuda(gen, 3, 4, 48, 48)
    m = _cuda(gen, 6, 4, 48, 48)
    runs = [ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=5.0, guidance_rescale=0.7, dynamic_threshold=0.95)
            for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@needs_gpu
def test_auto_dispatch_picks_cuda_for_cuda_tensors(gen):
    x = _cuda(gen, 2, 3, 8, 8)
    m = _cuda(gen, 4, 3, 8, 8)
    auto = ops.ddim_step(x, m, 0.4, 0.6, guidance_scale=3.0)
    assert torch.equal(auto, ops.ddim_step(x, m, 0.4, 0.6, guidance_scale=3.0, backend="cuda"))


@needs_gpu
def test_validation_errors_match_the_cpu_path():
    x = torch.randn(2, 3, 4, 4, device=CUDA)
    with pytest.raises(ValueError, match="guidance_rescale needs guidance_scale"):
        ops.ddim_step(x, x, 0.3, 0.5, guidance_rescale=0.5)
    with pytest.raises(ValueError, match="model_output is on cpu but sample is on cuda"):
        ops.ddim_step(x, x.cpu(), 0.3, 0.5)
    with pytest.raises(ValueError, match="noise is required when eta > 0"):
        ops.ddim_step(x, x, 0.3, 0.5, eta=1.0)


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_a_device_other_than_the_current_one(gen):
    x = _cuda(gen, 2, 4, 16, 16).to("cuda:1")
    m = _cuda(gen, 4, 4, 16, 16).to("cuda:1")
    assert torch.cuda.current_device() == 0
    out, ref = _ddim_both(x, m, 0.3, 0.5, guidance_scale=3.0, guidance_rescale=0.5)
    assert out.device == x.device
    assert_close_to_ref(out.cpu(), ref, dtype=torch.float32, scale=_scale(x, m, 0.3, 3.0))


@needs_gpu
@pytest.mark.slow
def test_dynamic_threshold_on_large_rows(gen):
    """Rows far longer than a block: the one-block-per-sample radix select over 3·512·512 elements."""
    x = _cuda(gen, 2, 3, 512, 512)
    m = _cuda(gen, 2, 3, 512, 512, scale=2.0)
    out, ref = _ddim_both(x, m, 0.2, 0.4, dynamic_threshold=0.995, prediction_type="sample")
    assert_close_to_ref(out.cpu(), ref, dtype=torch.float32, scale=_scale(x, m, 0.2, None))


# ---- attention (csrc/cuda/attention_kernels.cu) ---------------------------------------------------
# The cases of test_attention.py on CUDA tensors, float16 included; the same float64 reference and the
# same dtype-derived tolerances (float32: from the score range; bfloat16/float16: 2× SDPA's error).

from tests import test_attention as _att  # noqa: E402


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs start as NaN, so an element the kernel never writes fails the comparison."""
    from diffrt.ops import _alloc
    monkeypatch.setattr(_alloc, "empty", lambda shape, *, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                   device=device))


def _att_inputs(B, H, Lq, Lk, d, dtype, mask_kind="padded"):
    q, k, v, mask = _att.make_inputs(B, H, Lq, Lk, d, dtype, mask_kind=mask_kind if Lk > 1 else None)
    return q.to(CUDA), k.to(CUDA), v.to(CUDA), None if mask is None else mask.to(CUDA)


def _att_ref64(q, k, v, mask, scale=None):
    return _att.ref64(q.cpu(), k.cpu(), v.cpu(), None if mask is None else mask.cpu(), scale)


def _att_check(out, q, k, v, mask, scale=None):
    torch.cuda.synchronize()
    ref = _att_ref64(q, k, v, mask, scale)
    _att.assert_close_to_ref(out.cpu(), ref, q.cpu(), k.cpu(), v.cpu(), None if mask is None else mask.cpu(), scale)


def test_attention_cuda_backend_refuses_without_gpu_or_for_cpu_tensors():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ops.UnsupportedBackendError, match="backend 'cuda' cannot run these inputs"):
        ops.attention(q, q, q, backend="cuda")
    with pytest.raises(ops.UnsupportedBackendError, match="dtype float16 is not supported"):
        ops.attention(q.half(), q.half(), q.half(), backend="cpu")


@needs_gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 40, 59, 64, 100, 128, 256])
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (7, 77), (97, 97), (77, 1025), (1025, 77), (1, 97)])
def test_attention_forward_matches_reference(Lq, Lk, d, dtype):
    q, k, v, mask = _att_inputs(2, 2, Lq, Lk, d, dtype)
    out = ops.attention(q, k, v, key_padding_mask=mask, backend="cuda")
    assert out.device == q.device and out.dtype == dtype
    _att_check(out, q, k, v, mask)


@needs_gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Lq,Lk,d", [(2, 2, 97, 77, 59), (1, 3, 7, 130, 64), (2, 1, 1, 7, 32),
                                         (1, 1, 200, 300, 40), (2, 2, 65, 1, 128), (1, 2, 33, 70, 256)])
def test_attention_backward_matches_reference(B, H, Lq, Lk, d, dtype):
    q, k, v, mask = _att_inputs(B, H, Lq, Lk, d, dtype, mask_kind="empty_row")
    dout = torch.randn(B, H, Lq, d).to(dtype).to(CUDA)
    _, *ours = _att.grads(ops.attention, q, k, v, dout, key_padding_mask=mask, backend="cuda")
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    _, *ref = _att.grads(ops.attention_ref, q.cpu().double(), k.cpu().double(), v.cpu().double(),
                         dout.cpu().double(), key_padding_mask=cpu(mask))
    if dtype != torch.float32:  # SDPA's own low-precision error, on the CPU as in test_attention.py
        _, *low = _att.grads(lambda q, k, v: _att.sdpa(q, k, v, cpu(mask)), q.cpu(), k.cpu(), v.cpu(), dout.cpu())
    magnitude = dout.abs().max().item() * max(q.abs().max().item(), k.abs().max().item(), v.abs().max().item(), 1.0)
    for i, name in enumerate(("dq", "dk", "dv")):
        assert ours[i].dtype == dtype and torch.isfinite(ours[i]).all(), name
        err = (ours[i].cpu().double() - ref[i]).abs().max().item()
        if dtype == torch.float32:
            tol = 64 * _att.EPS32 * magnitude
        else:  # 2× SDPA's error in the same dtype, plus the final rounding of the largest gradient
            tol = (2 * (low[i].cpu().double() - ref[i]).abs().max().item()
                   + torch.finfo(dtype).eps * ref[i].abs().max().item() + 16 * _att.EPS32 * magnitude)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


@needs_gpu
@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_fully_masked_rows_are_zero(dtype):
    q, k, v, mask = _att_inputs(3, 2, 50, 77, 40, dtype, mask_kind="empty_row")
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = ops.attention(q, k, v, key_padding_mask=mask)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    out.backward(torch.randn_like(out))
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), name
        assert torch.equal(t.grad[-1], torch.zeros_like(t.grad[-1])), name


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_non_contiguous_inputs(dtype):
    B, H, Lq, Lk, d = 2, 3, 70, 77, 64
    q = torch.randn(B, Lq, H, d, device=CUDA).to(dtype).transpose(1, 2)
    k = torch.randn(B, H, d, Lk, device=CUDA).to(dtype).transpose(2, 3)
    v = torch.randn(B, Lk, H, 2 * d, device=CUDA).to(dtype).transpose(1, 2)[..., ::2]
    mask = torch.rand(B, Lk, device=CUDA) > 0.5
    mask[:, 3] = True
    _att_check(ops.attention(q, k, v, key_padding_mask=mask), q, k, v, mask)


@needs_gpu
def test_attention_scale_auto_dispatch_and_determinism():
    q, k, v, mask = _att_inputs(2, 2, 33, 70, 64, torch.float32)
    out = ops.attention(q, k, v, key_padding_mask=mask, scale=0.3)
    _att_check(out, q, k, v, mask, scale=0.3)
    runs = [ops.attention(q, k, v, key_padding_mask=mask, scale=0.3, backend="cuda") for _ in range(3)]
    assert all(torch.equal(out, r) for r in runs)


@needs_gpu
def test_attention_runs_on_torchs_current_stream():
    q, k, v, mask = _att_inputs(2, 4, 256, 256, 64, torch.float32)
    expected = ops.attention(q, k, v, key_padding_mask=mask)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        scaled = v * 1.0  # queued on `stream` just before the op reads it
        got = ops.attention(q, k, scaled, key_padding_mask=mask)
    stream.synchronize()
    assert torch.equal(got, expected)


@needs_gpu
def test_attention_validation_errors_match_the_cpu_path():
    q, k, v, mask = _att_inputs(2, 2, 5, 6, 8, torch.float32)
    with pytest.raises(ValueError, match="^key_padding_mask is on cpu but q is on cuda"):
        ops.attention(q, k, v, key_padding_mask=mask.cpu())
    with pytest.raises(ValueError, match="^k must have head dim"):
        ops.attention(q, k[..., :-1], v[..., :-1])
    big = torch.randn(1, 1, 4, 257, device=CUDA)
    with pytest.raises(ops.UnsupportedBackendError, match="head dims up to 256"):
        ops.attention(big, big, big, backend="cuda")
    # Without a backend request, a head dim the CUDA kernel cannot take goes to the next backend.
    torch.testing.assert_close(ops.attention(big, big, big), ops.attention_ref(big, big, big))


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_attention_on_a_device_other_than_the_current_one():
    q, k, v, mask = (t.to("cuda:1") for t in _att_inputs(2, 2, 33, 40, 64, torch.float32))
    assert torch.cuda.current_device() == 0
    out = ops.attention(q, k, v, key_padding_mask=mask)
    assert out.device == q.device
    _att_check(out, q, k, v, mask)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("variant", ["euler", "ancestral", "dpm first", "dpm midpoint", "dpm heun"])
def test_sigma_steps_on_cuda_match_reference(gen, dtype, prediction_type, variant):
    shape = (3, 5, 31, 17)
    x, m, z, last = (_cuda(gen, *shape, dtype=dtype) for _ in range(4))
    sigma, sigma_next, sigma_last = torch.tensor([4.0, 1.5, 0.3]), torch.tensor([2.0, 0.0, 0.1]), 6.0
    if variant in ("euler", "ancestral"):
        kw = dict(noise=z) if variant == "ancestral" else {}
        out = ops.euler_step(x, m, sigma, sigma_next, prediction_type=prediction_type, backend="cuda", **kw)
        ref = ops.euler_step_ref(_f64(x), _f64(m), sigma.double(), sigma_next.double(),
                                 prediction_type=prediction_type, **{k: _f64(v) for k, v in kw.items()})
    else:
        kw = {} if variant == "dpm first" else dict(x0_last=last, sigma_last=sigma_last, solver_type=variant[4:])
        out = ops.dpm_solver_2m_step(x, m, sigma, sigma_next, prediction_type=prediction_type, backend="cuda", **kw)
        ref = ops.dpm_solver_2m_step_ref(_f64(x), _f64(m), sigma.double(), sigma_next.double(),
                                         prediction_type=prediction_type, **{k: _f64(v) for k, v in kw.items()})
    torch.cuda.synchronize()
    assert out.is_cuda and out.dtype == dtype
    assert_close_to_ref(out.cpu(), ref, dtype=dtype, scale=8 * 5.0 * (1 + 4.0))
