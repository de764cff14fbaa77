"""diffrt.ops.attention against the float64 reference, on every CPU ISA this machine runs.

Tolerances follow the dtype: float32 within a few float32 eps of the float64 result (relative to the
magnitude of v); bfloat16 at most 2× the error of torch's own bfloat16 SDPA on the same inputs
(FlashAttention's rule). Outputs are allocated poisoned (NaN), so an element the kernel fails to write
shows up as an error. Inputs are fresh random draws each run.
"""

import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import diffrt
from diffrt.ops import _alloc, _backend, attention, attention_ref
from diffrt.ops._backend import UnsupportedBackendError

ISAS = diffrt._C.supported_cpu_isas()
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(params=ISAS)
def isa(request):
    previous = diffrt._C.cpu_isa()
    diffrt._C.set_cpu_isa(request.param)
    yield request.param
    diffrt._C.set_cpu_isa(previous)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    def empty(shape, *, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_alloc, "empty", empty)


def make_inputs(B, H, Lq, Lk, d, dtype, *, mask_kind=None, generator=None):
    q = torch.randn(B, H, Lq, d, generator=generator).to(dtype)
    k = torch.randn(B, H, Lk, d, generator=generator).to(dtype)
    v = torch.randn(B, H, Lk, d, generator=generator).to(dtype)
    mask = None
    if mask_kind is not None:
        mask = torch.rand(B, Lk, generator=generator) > 0.3
        mask[:, 0] = True  # every batch item attends to at least one key...
        if mask_kind == "empty_row" and B > 1:
            mask[-1] = False  # ...except the last, whose rows must come out as zeros
    return q, k, v, mask


def ref64(q, k, v, mask, scale=None):
    return attention_ref(q.double(), k.double(), v.double(), key_padding_mask=mask, scale=scale)


def sdpa(q, k, v, mask, scale=None):
    attn_mask = None if mask is None else mask[:, None, None, :]
    return torch.nan_to_num(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale))


def assert_close_to_ref(out, ref, q, k, v, mask, scale=None):
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all(), "output has NaN/inf (unwritten or overflowed elements)"
    err = (out.double() - ref).abs().max().item()
    if q.dtype == torch.float32:
        # Each output is a convex combination of rows of v, accumulated in float32; a rounding error ε in
        # a score s = scale·q·k perturbs its weight by ≈ ε·|s|, so the bound grows with the score range.
        d = q.shape[-1]
        scale = 1 / math.sqrt(d) if scale is None else scale
        score_range = abs(scale) * q.double().norm(dim=-1).max().item() * k.double().norm(dim=-1).max().item()
        tol = 4 * EPS32 * v.abs().max().item() * (4 + score_range)
    else:
        sdpa_err = (sdpa(q, k, v, mask, scale).double() - ref).abs().max().item()
        tol = 2 * sdpa_err + 4 * EPS32 * v.abs().max().item()
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g}"


SIZES = [(1, 1), (7, 77), (97, 97), (1025, 77), (77, 1025), (1, 97)]
HEAD_DIMS = [32, 40, 59, 64, 128]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("Lq,Lk", SIZES)
def test_forward_matches_reference(isa, Lq, Lk, d, dtype):
    mask_kind = "padded" if Lk > 1 else None
    q, k, v, mask = make_inputs(2, 2, Lq, Lk, d, dtype, mask_kind=mask_kind)
    assert_close_to_ref(attention(q, k, v, key_padding_mask=mask), ref64(q, k, v, mask), q, k, v, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [1, 8, 100, 160, 256])
def test_generic_head_dims(isa, d, dtype):
    q, k, v, mask = make_inputs(1, 2, 33, 130, d, dtype, mask_kind="padded")
    assert_close_to_ref(attention(q, k, v, key_padding_mask=mask), ref64(q, k, v, mask), q, k, v, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_fully_masked_rows_are_zero(isa, dtype):
    q, k, v, mask = make_inputs(3, 2, 50, 77, 40, dtype, mask_kind="empty_row")
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out = attention(q, k, v, key_padding_mask=mask)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    assert_close_to_ref(out.detach(), ref64(q.detach(), k.detach(), v.detach(), mask), q, k, v, mask)
    out.backward(torch.randn_like(out))
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), name
        assert torch.equal(t.grad[-1], torch.zeros_like(t.grad[-1])), name


def test_all_keys_masked_everywhere(isa):
    q, k, v, _ = make_inputs(2, 1, 5, 9, 32, torch.float32)
    out = attention(q, k, v, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_non_contiguous_inputs(isa, dtype):
    # diffusers' layout: (B, L, H, d) viewed as (B, H, L, d); plus a k whose head dim is strided.
    B, H, Lq, Lk, d = 2, 3, 70, 77, 64
    q = torch.randn(B, Lq, H, d).to(dtype).transpose(1, 2)
    k = torch.randn(B, H, d, Lk).to(dtype).transpose(2, 3)
    v = torch.randn(B, Lk, H, 2 * d).to(dtype).transpose(1, 2)[..., ::2]
    assert not q.is_contiguous() and k.stride(-1) != 1 and v.stride(-1) != 1
    mask = torch.rand(B, Lk) > 0.5
    mask[:, 3] = True
    assert_close_to_ref(attention(q, k, v, key_padding_mask=mask), ref64(q, k, v, mask), q, k, v, mask)


def test_scale(isa):
    q, k, v, _ = make_inputs(1, 2, 40, 50, 64, torch.float32)
    for scale in (0.3, 1.0, -0.05):
        assert_close_to_ref(attention(q, k, v, scale=scale), ref64(q, k, v, None, scale), q, k, v, None, scale)


def test_forward_is_independent_of_thread_count():
    q, k, v, mask = make_inputs(2, 3, 130, 200, 40, torch.float32, mask_kind="padded")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention(q, k, v, key_padding_mask=mask)
        torch.set_num_threads(max(2, threads))
        many = attention(q, k, v, key_padding_mask=mask)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_empty_inputs():
    q, k, v, _ = make_inputs(2, 2, 0, 5, 32, torch.float32)
    assert attention(q, k, v).shape == (2, 2, 0, 32)
    q, k, v, _ = make_inputs(2, 2, 4, 0, 32, torch.float32)
    out = attention(q, k, v)
    assert torch.equal(out, torch.zeros(2, 2, 4, 32))


# ---- backward -------------------------------------------------------------------------------------------

def grads(fn, q, k, v, dout, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,H,Lq,Lk,d", [(2, 2, 97, 77, 59), (1, 3, 7, 130, 64), (2, 1, 1, 7, 32),
                                         (1, 1, 200, 300, 40), (2, 2, 65, 1, 128)])
def test_backward_matches_reference(isa, B, H, Lq, Lk, d, dtype):
    q, k, v, mask = make_inputs(B, H, Lq, Lk, d, dtype, mask_kind="empty_row" if Lk > 1 else None)
    dout = torch.randn(B, H, Lq, d).to(dtype)
    _, *ours = grads(attention, q, k, v, dout, key_padding_mask=mask)
    _, *ref = grads(attention_ref, q.double(), k.double(), v.double(), dout.double(), key_padding_mask=mask)
    if dtype == torch.bfloat16:
        _, *low = grads(lambda q, k, v: sdpa(q, k, v, mask), q, k, v, dout)
    # Gradient magnitude scale: |dO|·|v|·|q or k| bounds every term of dQ, dK, dV.
    magnitude = dout.abs().max().item() * max(q.abs().max().item(), k.abs().max().item(), v.abs().max().item(), 1.0)
    for i, name in enumerate(("dq", "dk", "dv")):
        assert ours[i].dtype == dtype and torch.isfinite(ours[i]).all(), name
        err = (ours[i].double() - ref[i]).abs().max().item()
        if dtype == torch.float32:
            tol = 64 * EPS32 * magnitude
        else:
            # 2× torch's bfloat16 error, plus half a bfloat16 ulp of the largest gradient: like FlashAttention,
            # the kernel rounds P and dS to bfloat16 (each up to 2^-9 relative) for the products that consume
            # them, which on tiny problems (a handful of terms per gradient) can cost that much more than SDPA's
            # float32 intermediates.
            tol = (2 * (low[i].double() - ref[i]).abs().max().item() + 2**-8 * ref[i].abs().max().item()
                   + 16 * EPS32 * magnitude)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


def test_gradcheck_float64():
    # float64 runs the torch reference path (no compiled float64 kernel): its autograd must be exact.
    g = torch.Generator().manual_seed(0)
    q, k, v, mask = make_inputs(2, 2, 5, 6, 8, torch.float64, mask_kind="empty_row", generator=g)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, key_padding_mask=mask), inputs)


def test_fused_backward_agrees_with_reference_autograd_on_lse_recompute(isa):
    # The kernel's backward recomputes P from the saved log-sum-exp; a large score range stresses it.
    q, k, v, mask = make_inputs(1, 2, 60, 90, 32, torch.float32, mask_kind="padded")
    q = q * 4
    dout = torch.randn(1, 2, 60, 32)
    _, *ours = grads(attention, q, k, v, dout, key_padding_mask=mask)
    _, *ref = grads(attention_ref, q.double(), k.double(), v.double(), dout.double(), key_padding_mask=mask)
    for a, b in zip(ours, ref):
        assert (a.double() - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


# ---- non-finite inputs ----------------------------------------------------------------------------------
# The float64 reference (torch's softmax semantics) decides: NaN or +inf among a row's attended scores, or
# attended scores all −inf, make the row NaN; a −inf score drops its key (but 0·v still sees a NaN/inf v);
# NaN/inf in v reaches only the output columns it touches; masked keys (k and v) have no effect at all.
# Batch 2 of every masked case attends to no key and is poisoned too: it must stay exactly 0.

NAN, INF = math.nan, math.inf


def _poison_masked(t, mask):
    """NaN, +inf and −inf (in turn) in one column of every masked key of batches 0 and 1."""
    values = (NAN, INF, -INF)
    for b in range(2):
        for n, j in enumerate((~mask[b]).nonzero().flatten().tolist()):
            t[b, :, j, (3 * n) % t.shape[-1]] = values[n % 3]


def _last_attended(mask, b, Lk):
    return Lk - 1 if mask is None else int(mask[b].nonzero().max())


def _case_masked_k(q, k, v, mask):
    _poison_masked(k, mask)


def _case_masked_v(q, k, v, mask):
    _poison_masked(v, mask)


def _case_attended_k_nan(q, k, v, mask):
    k[0, 1, _last_attended(mask, 0, k.shape[2]), 3] = NAN  # every row of (0, 1) is NaN


def _case_attended_k_inf(q, k, v, mask):
    # Rows with q[..., 0] > 0 score −inf on that key (dropped), rows with q[..., 0] < 0 score +inf (NaN).
    k[0, 0, _last_attended(mask, 0, k.shape[2]), 0] = -INF
    k[1, 1, _last_attended(mask, 1, k.shape[2]), 2] = INF


def _case_attended_v_nan(q, k, v, mask):
    v[0, 0, _last_attended(mask, 0, k.shape[2]), 5] = NAN  # column 5 of (0, 0) is NaN


def _case_attended_v_inf(q, k, v, mask):
    v[0, 1, _last_attended(mask, 0, k.shape[2]), 4] = INF
    v[1, 0, _last_attended(mask, 1, k.shape[2]), 6] = -INF


def _case_q_nan(q, k, v, mask):
    q[0, 0, 3, 7] = NAN
    q[1, 1, 0, :] = NAN


def _case_q_inf(q, k, v, mask):
    q[0, 0, 2, 0] = INF  # scores ±inf (k's column 0 has both signs): NaN row
    q[1, 0, 4, 1] = -INF
    k[1, 0, :, 1] = k[1, 0, :, 1].abs() + 0.25  # every score of row (1, 0, 4) is −inf: NaN row
    q[0, 1, 5, 1] = -INF


NONFINITE_CASES = {
    "masked_k": _case_masked_k, "masked_v": _case_masked_v,
    "attended_k_nan": _case_attended_k_nan, "attended_k_inf": _case_attended_k_inf,
    "attended_v_nan": _case_attended_v_nan, "attended_v_inf": _case_attended_v_inf,
    "q_nan": _case_q_nan, "q_inf": _case_q_inf,
}


@pytest.fixture
def finite_poison(monkeypatch):
    """Outputs start as a finite sentinel here, so an unwritten element cannot pass for an expected NaN."""
    def empty(shape, *, dtype, device):
        return torch.full(shape, 7777.0, dtype=dtype, device=device)

    monkeypatch.setattr(_alloc, "empty", empty)


def nonfinite_inputs(case, masked, Lk, dtype):
    q0, k0, v0, mask = make_inputs(3, 2, 37, Lk, 40, dtype, mask_kind="empty_row" if masked else None)
    q, k, v = q0.clone(), k0.clone(), v0.clone()
    NONFINITE_CASES[case](q, k, v, mask)
    if masked:  # batch 2 attends to nothing: its non-finite values must not matter either
        q[2, 0, 1, 0], k[2, 1, 3, 2], v[2, 0, 4, 1], k[2, 0, 0, 0], v[2, 1, 2, 3] = NAN, INF, NAN, NAN, -INF
    return (q0, k0, v0), (q, k, v), mask


def assert_same_nonfinite(got, ref, tol, what):
    """got has NaN, +inf and −inf exactly where ref does, and is within tol of ref elsewhere."""
    got = got.double()
    for kind, where in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = where(got) != where(ref)
        assert not differ.any(), (f"{what}: {kind} disagrees with the reference at {int(differ.sum())} of "
                                  f"{differ.numel()} elements, first at {differ.nonzero()[0].tolist()} "
                                  f"(got {got[tuple(differ.nonzero()[0])].item()}, "
                                  f"want {ref[tuple(differ.nonzero()[0])].item()})")
    finite = torch.isfinite(ref)
    err = (got[finite] - ref[finite]).abs().max().item() if finite.any() else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g} on the finite elements"


def forward_tolerance(q, k, v, mask, scale=None):
    """The tolerance assert_close_to_ref applies, for finite inputs q, k, v."""
    ref = ref64(q, k, v, mask, scale)
    if q.dtype == torch.float32:
        d = q.shape[-1]
        scale = 1 / math.sqrt(d) if scale is None else scale
        score_range = abs(scale) * q.double().norm(dim=-1).max().item() * k.double().norm(dim=-1).max().item()
        return 4 * EPS32 * v.abs().max().item() * (4 + score_range)
    sdpa_err = (sdpa(q, k, v, mask, scale).double() - ref).abs().max().item()
    return 2 * sdpa_err + 4 * EPS32 * v.abs().max().item()


@pytest.mark.parametrize("case", NONFINITE_CASES)
@pytest.mark.parametrize("Lk", [77, 300], ids=["one_key_tile", "three_key_tiles"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_nonfinite_forward_matches_reference(isa, finite_poison, dtype, Lk, case):
    clean, (q, k, v), mask = nonfinite_inputs(case, True, Lk, dtype)
    out, ref = attention(q, k, v, key_padding_mask=mask), ref64(q, k, v, mask)
    assert_same_nonfinite(out, ref, forward_tolerance(*clean, mask), f"{case} out")
    assert torch.equal(out[2], torch.zeros_like(out[2])), "batch without keys"
    if case.startswith("masked"):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", [c for c in NONFINITE_CASES if not c.startswith("masked")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_nonfinite_forward_without_mask_matches_reference(isa, finite_poison, dtype, case):
    clean, (q, k, v), _ = nonfinite_inputs(case, False, 300, dtype)
    out, ref = attention(q, k, v), ref64(q, k, v, None)
    assert_same_nonfinite(out, ref, forward_tolerance(*clean, None), f"{case} out")


def backward_tolerances(q, k, v, dout, mask):
    """Per gradient, the tolerance test_backward_matches_reference applies, for finite inputs."""
    magnitude = dout.abs().max().item() * max(q.abs().max().item(), k.abs().max().item(), v.abs().max().item(), 1.0)
    if q.dtype == torch.float32:
        return [64 * EPS32 * magnitude] * 3
    _, *ref = grads(attention_ref, q.double(), k.double(), v.double(), dout.double(), key_padding_mask=mask)
    _, *low = grads(lambda q, k, v: sdpa(q, k, v, mask), q, k, v, dout)
    return [2 * (lo.double() - r).abs().max().item() + 2**-8 * r.abs().max().item() + 16 * EPS32 * magnitude
            for lo, r in zip(low, ref)]


@pytest.mark.parametrize("case", NONFINITE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_nonfinite_backward_matches_reference(isa, finite_poison, dtype, case):
    clean, (q, k, v), mask = nonfinite_inputs(case, True, 300, dtype)
    dout = torch.randn(q.shape).to(dtype)
    _, *ours = grads(attention, q, k, v, dout, key_padding_mask=mask)
    _, *ref = grads(attention_ref, q.double(), k.double(), v.double(), dout.double(), key_padding_mask=mask)
    tols = backward_tolerances(*clean, dout, mask)
    for name, got, want, tol in zip(("dq", "dk", "dv"), ours, ref, tols):
        assert_same_nonfinite(got, want, tol, f"{case} {name}")
        assert torch.equal(got[2], torch.zeros_like(got[2])), f"{name}: batch without keys"
    # A masked key has no effect, so its gradients are exactly zero whatever its k and v hold.
    for name, got in (("dk", ours[1]), ("dv", ours[2])):
        masked_keys = got.permute(0, 2, 1, 3)[~mask]  # (masked keys, H, d)
        assert torch.equal(masked_keys, torch.zeros_like(masked_keys)), f"{name}: masked keys"
    if case.startswith("masked"):
        assert all(torch.isfinite(g).all() for g in ours)


# ---- zero-size inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("B,H,Lq,Lk", [(0, 2, 5, 6), (2, 0, 5, 6), (2, 2, 0, 6), (2, 2, 5, 0), (2, 2, 0, 0),
                                       (0, 0, 0, 0), (1, 3, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_zero_size_inputs_match_reference(isa, finite_poison, dtype, B, H, Lq, Lk, masked):
    q, k, v, _ = make_inputs(B, H, Lq, Lk, 24, dtype)
    mask = (torch.rand(B, Lk) > 0.5) if masked else None
    dout = torch.randn(B, H, Lq, 24).to(dtype)
    out, *ours = grads(attention, q, k, v, dout, key_padding_mask=mask)
    ref_out, *ref = grads(attention_ref, q.double(), k.double(), v.double(), dout.double(), key_padding_mask=mask)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *ours), (ref_out, *ref)):
        assert got.shape == want.shape and got.dtype == dtype, name
        assert torch.equal(got.double(), want), name  # every element is an exact 0 (or there is none)
    assert attention(q, k, v, key_padding_mask=mask).shape == (B, H, Lq, 24)  # the no-grad path too


def test_zero_head_dim_is_refused():
    q, k, v, _ = make_inputs(2, 2, 3, 4, 0, torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k, v)
    q, k, v, _ = make_inputs(0, 2, 0, 0, 0, torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        attention(q, k, v)


# ---- dispatch and validation ------------------------------------------------------------------------------

def test_backends():
    q, k, v, _ = make_inputs(1, 1, 4, 4, 8, torch.float64)
    torch.testing.assert_close(attention(q, k, v), attention_ref(q, k, v))  # float64 → torch reference
    with pytest.raises(UnsupportedBackendError, match="float64"):
        attention(q, k, v, backend="cpu")
    with pytest.raises(UnsupportedBackendError, match="unknown backend"):
        attention(q, k, v, backend="nope")
    q, k, v, _ = make_inputs(1, 1, 4, 4, 8, torch.float32)
    torch.testing.assert_close(attention(q, k, v, backend="torch"), attention_ref(q, k, v))


def test_a_head_dim_the_cuda_kernel_cannot_take_goes_to_the_next_backend(monkeypatch):
    """The CUDA kernel takes head dims up to _C.CUDA_ATTENTION_MAX_HEAD_DIM. With a stand-in CUDA backend that
    runs here (recording its calls), a larger head dim goes to the next backend of the automatic order — the
    CPU kernel — instead of raising; asking for "cuda" by name raises with the reason."""
    module = importlib.import_module("diffrt.ops.attention")
    ran = []

    def stand_in(q, k, v, key_padding_mask, scale):
        ran.append(q.shape[-1])
        return torch.zeros_like(q)

    monkeypatch.setitem(_backend.BACKENDS, "cuda", dataclasses.replace(
        _backend.BACKENDS["cuda"], devices=("cpu",), dtypes=(torch.float32,), unavailable=None))
    monkeypatch.setitem(module._IMPLS, "cuda", _backend.Limited(stand_in, module._IMPLS["cuda"].refuses))
    monkeypatch.setattr(_backend, "_CHOSEN", {})
    limit = diffrt._C.CUDA_ATTENTION_MAX_HEAD_DIM
    q, k, v, mask = make_inputs(1, 2, 3, 5, limit, torch.float32, mask_kind="padded")
    attention(q, k, v, key_padding_mask=mask)
    assert ran == [limit]
    q, k, v, mask = make_inputs(1, 2, 3, 5, limit + 1, torch.float32, mask_kind="padded")
    out = attention(q, k, v, key_padding_mask=mask)
    assert ran == [limit]
    assert_close_to_ref(out, ref64(q, k, v, mask), q, k, v, mask)
    refusal = f"backend 'cuda' cannot run these inputs: the CUDA kernel supports head dims up to {limit}"
    with pytest.raises(UnsupportedBackendError, match=refusal):
        attention(q, k, v, backend="cuda")
    assert ran == [limit]


@pytest.mark.parametrize("change,error,name", [
    (lambda q, k, v, m: (q[0], k, v, m), ValueError, "q"),
    (lambda q, k, v, m: (q, k[..., :-1], v[..., :-1], m), ValueError, "k"),
    (lambda q, k, v, m: (q, k[:1], v[:1], m[:1]), ValueError, "k"),
    (lambda q, k, v, m: (q, k[:, :1], v[:, :1], m), ValueError, "k"),
    (lambda q, k, v, m: (q, k, v[:, :, :-1], m), ValueError, "v"),
    (lambda q, k, v, m: (q, k, v, m[:, :-1]), ValueError, "key_padding_mask"),
    (lambda q, k, v, m: (q, k, v, m.float()), TypeError, "key_padding_mask"),
    (lambda q, k, v, m: (q.int(), k, v, m), TypeError, "q"),
    (lambda q, k, v, m: (q, k.double(), v, m), TypeError, "k"),
    (lambda q, k, v, m: (q, k, v.tolist(), m), TypeError, "v"),
])
def test_bad_inputs_name_the_argument(change, error, name):
    q, k, v, mask = make_inputs(2, 2, 5, 6, 8, torch.float32, mask_kind="padded")
    q, k, v, mask = change(q, k, v, mask)
    with pytest.raises(error, match=rf"^{name}\b"):
        attention(q, k, v, key_padding_mask=mask)


def test_bad_scale():
    q, k, v, _ = make_inputs(1, 1, 2, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="scale"):
        attention(q, k, v, scale=math.inf)
    with pytest.raises(TypeError, match="scale"):
        attention(q, k, v, scale="1")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_large_self_attention(dtype):
    q, k, v, mask = make_inputs(1, 2, 4096, 4096, 64, dtype, mask_kind="padded")
    assert_close_to_ref(attention(q, k, v, key_padding_mask=mask), ref64(q, k, v, mask), q, k, v, mask)
