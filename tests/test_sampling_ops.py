"""ddim_step, ddim_invert_step and cfg_combine against their float64 references."""

import math

import pytest
import torch

from diffrt import ops
from tests._helpers import assert_close_to_ref, rand

DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(1, 1, 7, 13), (3, 5, 31, 17), (2, 4, 64, 64)]


def _scale(sample, model_output, alpha_t, guidance):
    """Magnitude of the intermediate terms x̂0 and ε̂, for the float32-arithmetic part of the tolerance."""
    w = 0.0 if guidance is None else float(torch.as_tensor(guidance).abs().max())
    m = (1 + 2 * w) * model_output.abs().max().item()
    return (sample.abs().max().item() + m) / math.sqrt(float(torch.as_tensor(alpha_t).min()))


def _f64(v):
    return v.double() if isinstance(v, torch.Tensor) else v


def _run_both(sample, model_output, alpha_t, alpha_prev, **kw):
    out = ops.ddim_step(sample, model_output, alpha_t, alpha_prev, **kw)
    ref = ops.ddim_step_ref(
        sample.double(), model_output.double(), _f64(alpha_t), _f64(alpha_prev),
        **{k: _f64(v) for k, v in kw.items()},
    )
    return out, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("guided", [False, True])
def test_ddim_step_matches_reference(isa, gen, dtype, shape, prediction_type, guided):
    n = shape[0]
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 2 * n if guided else n, *shape[1:], dtype=dtype)
    w = 7.5 if guided else None
    out, ref = _run_both(x, m, 0.35, 0.62, prediction_type=prediction_type, guidance_scale=w)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close_to_ref(out, ref, dtype=dtype, scale=_scale(x, m, 0.35, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("guided", [False, True])
def test_ddim_step_short_path_matches_the_general_path(gen, monkeypatch, dtype, prediction_type, guided):
    """A sampling loop's call (float ᾱ and w) goes straight to the kernel; the same values as 0-d
    tensors go the general way: the same bits. Invalid float calls still get the general errors."""
    from diffrt.ops import sampling

    x = rand(gen, 3, 4, 8, 8, dtype=dtype)
    m = rand(gen, 6 if guided else 3, 4, 8, 8, dtype=dtype)
    w = 5.0 if guided else None
    as_tensor = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    general = ops.ddim_step(x, m, as_tensor(0.35), as_tensor(0.62), prediction_type=prediction_type,
                            guidance_scale=as_tensor(w))
    uniform_calls = []
    with monkeypatch.context() as patched:  # the short path runs none of the general checks
        patched.setattr(sampling._checks, "tensor", lambda *a: pytest.fail("took the general path"))
        entry = sampling._C.ddim_step_uniform
        patched.setattr(sampling._C, "ddim_step_uniform", lambda *a: uniform_calls.append(a) or entry(*a))
        short = ops.ddim_step(x, m, 0.35, 0.62, prediction_type=prediction_type, guidance_scale=w)
    assert torch.equal(short, general)
    assert len(uniform_calls) == 1  # the CPU's one-call entry
    for alpha_t, alpha_prev, match in ((1.5, 0.6, "alpha_t must lie in"), (0.3, -0.1, "alpha_prev must lie in"),
                                       (math.nan, 0.6, "alpha_t must be finite")):
        with pytest.raises(ValueError, match=match):
            ops.ddim_step(x, m, alpha_t, alpha_prev, prediction_type=prediction_type, guidance_scale=w)
    with pytest.raises(ValueError, match="model_output must"):
        ops.ddim_step(x, m[:1], 0.35, 0.62, prediction_type=prediction_type, guidance_scale=w)
    if guided:
        with pytest.raises(ValueError, match="guidance_scale must be finite"):
            ops.ddim_step(x, m, 0.35, 0.62, prediction_type=prediction_type, guidance_scale=math.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_noise_and_x0(isa, gen, dtype, eta):
    shape = (3, 5, 31, 17)
    x, m, z = (rand(gen, *shape, dtype=dtype) for _ in range(3))
    (out, x0), (ref, ref_x0) = _run_both(x, m, 0.2, 0.5, eta=eta, noise=z, return_x0=True)
    assert_close_to_ref(out, ref, dtype=dtype, scale=_scale(x, m, 0.2, None))
    assert_close_to_ref(x0, ref_x0, dtype=dtype, scale=_scale(x, m, 0.2, None))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_clipped", [False, True])
@pytest.mark.parametrize(
    "clip", [{"clip_sample_range": 1.0}, {"dynamic_threshold": 0.9}, {"dynamic_threshold": 0.995, "dynamic_threshold_max": 1.7}]
)
def test_ddim_step_clipping_and_thresholding(isa, gen, dtype, use_clipped, clip):
    shape = (3, 5, 31, 17)
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 2 * shape[0], *shape[1:], dtype=dtype, scale=1.5)
    (out, x0), (ref, ref_x0) = _run_both(
        x, m, 0.1, 0.3, guidance_scale=3.0, use_clipped_model_output=use_clipped, return_x0=True, **clip
    )
    scale = _scale(x, m, 0.1, 3.0)
    assert_close_to_ref(x0, ref_x0, dtype=dtype, scale=scale)
    assert_close_to_ref(out, ref, dtype=dtype, scale=scale)
    assert x0.abs().max() <= clip.get("clip_sample_range", 1.0)  # both clip modes map into [-1, 1] here


@pytest.mark.parametrize("dtype", DTYPES)
def test_ddim_step_per_sample_alphas_and_guidance(isa, gen, dtype):
    shape = (4, 3, 9, 11)
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 8, *shape[1:], dtype=dtype)
    a_t = torch.tensor([0.1, 0.3, 0.5, 0.9])
    a_prev = torch.tensor([0.2, 0.35, 0.9, 0.95])
    w = torch.tensor([1.0, 3.0, 7.5, 0.0])
    out, ref = _run_both(x, m, a_t, a_prev, guidance_scale=w, guidance_rescale=0.7)
    assert_close_to_ref(out, ref, dtype=dtype, scale=_scale(x, m, a_t, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_ddim_step_guidance_rescale(isa, gen, dtype, rescale):
    shape = (2, 4, 64, 64)
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 4, *shape[1:], dtype=dtype)
    out, ref = _run_both(x, m, 0.5, 0.7, guidance_scale=7.5, guidance_rescale=rescale, prediction_type="v_prediction")
    assert_close_to_ref(out, ref, dtype=dtype, scale=_scale(x, m, 0.5, 7.5))


def test_ddim_step_non_contiguous_inputs(isa, gen):
    base = rand(gen, 3, 5, 17, 31)
    x = base.transpose(2, 3)  # (3, 5, 31, 17), not contiguous
    m = rand(gen, 6, 5, 31, 34)[..., ::2]
    z = rand(gen, 3, 17, 5, 31).permute(0, 2, 3, 1)
    assert not (x.is_contiguous() or m.is_contiguous() or z.is_contiguous())
    out, ref = _run_both(x, m, 0.3, 0.6, guidance_scale=4.0, eta=1.0, noise=z)
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=_scale(x, m, 0.3, 4.0))


def test_ddim_step_in_place_safe_on_large_batch(isa, gen):
    """Several threads, rows split across threads: compare a large case too."""
    shape = (8, 3, 96, 80)
    x = rand(gen, *shape)
    m = rand(gen, 16, *shape[1:])
    out, ref = _run_both(x, m, 0.05, 0.2, guidance_scale=5.0, dynamic_threshold=0.95, prediction_type="sample")
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=_scale(x, m, 0.05, 5.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
def test_ddim_invert_step_matches_reference(isa, gen, dtype, prediction_type):
    shape = (2, 4, 33, 29)
    x = rand(gen, *shape, dtype=dtype)
    m = rand(gen, 4, *shape[1:], dtype=dtype)
    out = ops.ddim_invert_step(x, m, 0.8, 0.6, prediction_type=prediction_type, guidance_scale=2.0)
    ref = ops.ddim_invert_step_ref(x.double(), m.double(), 0.8, 0.6, prediction_type=prediction_type, guidance_scale=2.0)
    assert_close_to_ref(out, ref, dtype=dtype, scale=_scale(x, m, 0.6, 2.0))


def test_ddim_invert_undoes_ddim_step(gen):
    """With a model output held fixed, inversion from ᾱ_prev back to ᾱ_t inverts the η = 0 step."""
    x = rand(gen, 2, 4, 16, 16, dtype=torch.float64)
    eps = rand(gen, 2, 4, 16, 16, dtype=torch.float64)
    x_prev = ops.ddim_step(x, eps, 0.3, 0.7)
    back = ops.ddim_invert_step(x_prev, eps, 0.7, 0.3)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0.0, 0.5])
def test_cfg_combine_matches_reference(isa, gen, dtype, rescale):
    for shape in SHAPES:
        m = rand(gen, 2 * shape[0], *shape[1:], dtype=dtype)
        w = torch.linspace(0.0, 9.0, shape[0])
        out = ops.cfg_combine(m, w, guidance_rescale=rescale)
        ref = ops.cfg_combine_ref(m.double(), w.double(), guidance_rescale=rescale)
        assert out.shape == (shape[0], *shape[1:])
        assert_close_to_ref(out, ref, dtype=dtype, scale=(1 + 2 * 9.0) * m.abs().max().item())


def test_cfg_combine_constant_guided_output_is_left_unscaled():
    m = torch.ones(2, 3, 4, 4)
    out = ops.cfg_combine(m, 5.0, guidance_rescale=0.7)
    torch.testing.assert_close(out, torch.ones(1, 3, 4, 4))
    torch.testing.assert_close(ops.cfg_combine_ref(m, 5.0, guidance_rescale=0.7), out)


def test_float64_runs_on_the_reference_backend(gen):
    x = rand(gen, 2, 3, 5, 5, dtype=torch.float64)
    m = rand(gen, 2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ops.ddim_step(x, m, 0.4, 0.6), ops.ddim_step_ref(x, m, 0.4, 0.6), rtol=0, atol=0)


def test_explicit_backends_agree(gen):
    x = rand(gen, 2, 3, 8, 8)
    m = rand(gen, 4, 3, 8, 8)
    cpu = ops.ddim_step(x, m, 0.4, 0.6, guidance_scale=3.0, backend="cpu")
    ref = ops.ddim_step(x, m, 0.4, 0.6, guidance_scale=3.0, backend="torch")
    torch.testing.assert_close(cpu, ref, rtol=1e-5, atol=1e-5)


def test_concurrent_calls_from_threads(gen):
    """The kernels hold no shared state and release the GIL: many threads at once give exact results."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [(rand(gen, 2, 4, 40, 40), rand(gen, 4, 4, 40, 40), 1.0 + i) for i in range(16)]
    expected = [ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=w, guidance_rescale=0.5) for x, m, w in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda c: ops.ddim_step(c[0], c[1], 0.3, 0.5, guidance_scale=c[2], guidance_rescale=0.5), cases))
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_ddim_step_at_zero_terminal_snr(isa, gen, prediction_type):
    """ᾱ_t = 0 (pure noise, zero-terminal-SNR schedules) is a valid first step for v and x0 prediction."""
    x, m = rand(gen, 2, 4, 9, 9), rand(gen, 2, 4, 9, 9)
    out, ref = _run_both(x, m, 0.0, 0.05, prediction_type=prediction_type)
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=x.abs().max().item() + m.abs().max().item())


def _offset_halves(gen, n, shape, offset, dtype=torch.float32):
    """[uncond; cond] with a large common mean: |mean|/std ≈ offset (the regime of latents that drift)."""
    uncond = offset + rand(gen, n, *shape, dtype=torch.float64)
    cond = offset + 1.3 * rand(gen, n, *shape, dtype=torch.float64) + 0.2
    return torch.cat([uncond, cond]).to(dtype)


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4, -3e4])
@pytest.mark.parametrize("rescale", [0.7, 1.0])
def test_guidance_rescale_std_is_accurate_at_large_offsets(isa, gen, offset, rescale):
    """The per-sample std of ε_c and ε̃ is computed stably (chunked two-pass, merged in a fixed order):
    the fused kernels are at most 2× as far from the float64 truth as torch's own float32 std is."""
    shape = (4, 48, 40)
    m = _offset_halves(gen, 2, shape, offset)
    w = torch.tensor([7.5, 3.0])
    exact = ops.cfg_combine_ref(m.double(), w.double(), guidance_rescale=rescale)
    torch32 = ops.cfg_combine_ref(m, w, guidance_rescale=rescale).double()
    allowed = 2 * (torch32 - exact).abs().max().item() + 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    err = (ops.cfg_combine(m, w, guidance_rescale=rescale).double() - exact).abs().max().item()
    assert err <= allowed, f"cfg_combine: max error {err:.3g}, torch float32 {allowed:.3g}"

    x = offset + rand(gen, 2, *shape)
    exact = ops.ddim_step_ref(x.double(), m.double(), 0.5, 0.7, guidance_scale=w.double(), guidance_rescale=rescale)
    torch32 = ops.ddim_step_ref(x, m, 0.5, 0.7, guidance_scale=w, guidance_rescale=rescale).double()
    allowed = 2 * (torch32 - exact).abs().max().item() + 4 * torch.finfo(torch.float32).eps * exact.abs().max().item()
    err = (ops.ddim_step(x, m, 0.5, 0.7, guidance_scale=w, guidance_rescale=rescale).double() - exact).abs().max().item()
    assert err <= allowed, f"ddim_step: max error {err:.3g}, torch float32 {allowed:.3g}"


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_results_do_not_depend_on_the_thread_count(isa, gen, offset):
    """Per-sample reductions (guidance-rescale std, quantile, DiffEdit mean) add in a fixed order:
    8 threads give the single-threaded result bit for bit."""
    shape = (3, 4, 96, 80)
    x = offset + rand(gen, *shape)
    m = _offset_halves(gen, 3, shape[1:], offset)
    q, r = rand(gen, 2, 3, 4, 96, 80), rand(gen, 2, 3, 4, 96, 80)
    mask = torch.rand(3, 1, 96, 80, generator=gen)
    calls = [
        lambda: ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=torch.tensor([7.5, 2.0, 4.0]), guidance_rescale=0.7),
        lambda: ops.ddim_step(x, m, 0.3, 0.5, guidance_scale=5.0, dynamic_threshold=0.995, return_x0=True)[1],
        lambda: ops.cfg_combine(m, 7.5, guidance_rescale=1.0),
        lambda: ops.mask_blend(mask, x, m[:3]),
        lambda: ops.diffedit_mask(q, r, threshold=None),
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = [call() for call in calls]
        torch.set_num_threads(8)
        parallel = [call() for call in calls]
    finally:
        torch.set_num_threads(threads)
    for i, (s, p) in enumerate(zip(serial, parallel)):
        assert torch.equal(s, p), f"call {i}: {int((s != p).sum())} elements differ between 1 and 8 threads"


# ---- σ-space steps: euler_step (plain and ancestral) and dpm_solver_2m_step ------------------------


def _sigma_scale(*tensors, sigma):
    """Magnitude of the intermediate terms (x, σ·m, x̂0) for the float32 part of the tolerance."""
    s = float(torch.as_tensor(sigma).abs().max())
    return sum(t.abs().max().item() for t in tensors) * (1 + s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("ancestral", [False, True])
def test_euler_step_matches_reference(isa, gen, dtype, shape, prediction_type, ancestral):
    x = rand(gen, *shape, dtype=dtype, scale=4.0)
    m, z = rand(gen, *shape, dtype=dtype), rand(gen, *shape, dtype=dtype)
    sigma = torch.rand(shape[0], generator=gen, dtype=torch.float64) * 10 + 0.05
    sigma_next = sigma * torch.rand(shape[0], generator=gen, dtype=torch.float64)
    noise = z if ancestral else None
    out, x0 = ops.euler_step(x, m, sigma, sigma_next, noise=noise, prediction_type=prediction_type, return_x0=True)
    ref, ref_x0 = ops.euler_step_ref(x.double(), m.double(), sigma, sigma_next,
                                     noise=None if noise is None else noise.double(),
                                     prediction_type=prediction_type, return_x0=True)
    assert out.dtype == dtype and out.shape == x.shape
    scale = _sigma_scale(x, m, z, sigma=sigma)
    assert_close_to_ref(x0, ref_x0, dtype=dtype, scale=scale)
    assert_close_to_ref(out, ref, dtype=dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction_type", ops.PREDICTION_TYPES)
@pytest.mark.parametrize("order", ["first", "midpoint", "heun"])
def test_dpm_solver_2m_step_matches_reference(isa, gen, dtype, shape, prediction_type, order):
    n = shape[0]
    x, m, last = (rand(gen, *shape, dtype=dtype) for _ in range(3))
    sigma = torch.rand(n, generator=gen, dtype=torch.float64) * 10 + 0.05
    sigma_next = sigma * torch.rand(n, generator=gen, dtype=torch.float64)
    sigma_last = sigma * (1 + torch.rand(n, generator=gen, dtype=torch.float64) * 2)
    kw = {} if order == "first" else dict(x0_last=last, sigma_last=sigma_last, solver_type=order)
    out, x0 = ops.dpm_solver_2m_step(x, m, sigma, sigma_next, prediction_type=prediction_type, return_x0=True, **kw)
    kw64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    ref, ref_x0 = ops.dpm_solver_2m_step_ref(x.double(), m.double(), sigma, sigma_next,
                                             prediction_type=prediction_type, return_x0=True, **kw64)
    # D1 = (x̂0 − x̂0_last)/r amplifies float32 rounding by 1/r: r = log(σ_last/σ)/log(σ/σ_next)
    r = (sigma_last.log() - sigma.log()) / (sigma.log() - sigma_next.log())
    scale = _sigma_scale(x, m, last, sigma=sigma) * (1 + float((1 / r).max()))
    assert_close_to_ref(x0, ref_x0, dtype=dtype, scale=scale)
    assert_close_to_ref(out, ref, dtype=dtype, scale=scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigma_steps_to_a_zero_sigma(isa, gen, dtype):
    """σ_next = 0: Euler lands on x̂0 (and the ancestral step adds no noise), DPM-Solver returns x̂0."""
    shape = (2, 4, 9, 11)
    x, m, z = (rand(gen, *shape, dtype=dtype) for _ in range(3))
    for noise in (None, z):
        out, x0 = ops.euler_step(x, m, 3.0, 0.0, noise=noise, return_x0=True)
        assert_close_to_ref(out, x0.double(), dtype=dtype, scale=4 * _sigma_scale(x, m, sigma=3.0))
    out, x0 = ops.dpm_solver_2m_step(x, m, 3.0, 0.0, x0_last=z, sigma_last=5.0, return_x0=True)
    assert torch.equal(out, x0)


def test_sigma_steps_validate_their_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma must lie in"):
        ops.euler_step(x, x, 0.0, 0.0)
    with pytest.raises(ValueError, match="noise"):
        ops.euler_step(x, x, 1.0, 0.5, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="sigma_next <= sigma"):
        ops.euler_step(x, x, 1.0, 2.0, noise=x)
    with pytest.raises(ValueError, match="prediction_type"):
        ops.euler_step(x, x, 1.0, 0.5, prediction_type="flow")
    with pytest.raises(ValueError, match="x0_last and sigma_last go together"):
        ops.dpm_solver_2m_step(x, x, 1.0, 0.5, x0_last=x)
    with pytest.raises(ValueError, match="sigma_last must be > sigma"):
        ops.dpm_solver_2m_step(x, x, 1.0, 0.5, x0_last=x, sigma_last=1.0)
    with pytest.raises(ValueError, match="sigma_next must be <= sigma"):
        ops.dpm_solver_2m_step(x, x, 1.0, 1.5)
    with pytest.raises(ValueError, match="solver_type"):
        ops.dpm_solver_2m_step(x, x, 1.0, 0.5, solver_type="euler")
    with pytest.raises(ValueError, match="model_output must have the shape"):
        ops.dpm_solver_2m_step(x, torch.zeros(2, 4), 1.0, 0.5)


def test_sigma_steps_take_empty_inputs():
    for shape in ((0, 3, 4), (2, 0)):
        x = torch.zeros(shape)
        assert ops.euler_step(x, x, 1.0, 0.5, noise=x).shape == shape
        out, x0 = ops.dpm_solver_2m_step(x, x, 1.0, 0.5, x0_last=x, sigma_last=2.0, return_x0=True)
        assert out.shape == x0.shape == shape


def test_sigma_steps_differentiate_like_their_references(gen):
    shape = (2, 3, 5)
    x, m, z, last = (rand(gen, *shape).requires_grad_() for _ in range(4))
    for run, ref in (
        (lambda: ops.euler_step(x, m, 2.5, 1.0, noise=z, prediction_type="v_prediction"),
         lambda: ops.euler_step_ref(x, m, 2.5, 1.0, noise=z, prediction_type="v_prediction")),
        (lambda: ops.dpm_solver_2m_step(x, m, 2.5, 1.0, x0_last=last, sigma_last=4.0),
         lambda: ops.dpm_solver_2m_step_ref(x, m, 2.5, 1.0, x0_last=last, sigma_last=4.0)),
    ):
        grads = torch.autograd.grad(run().square().sum(), (x, m, z, last), allow_unused=True)
        want = torch.autograd.grad(ref().square().sum(), (x, m, z, last), allow_unused=True)
        for g, w in zip(grads, want):
            assert (g is None) == (w is None)
            if g is not None:
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
