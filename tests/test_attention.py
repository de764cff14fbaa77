"""diffrt.ops.attention against the float64 reference, on every CPU ISA this machine runs.

Tolerances follow the dtype: float32 within a few float32 eps of the float64 result (relative to the
magnitude of v); bfloat16 at most 2× the error of torch's own bfloat16 SDPA on the same inputs
(FlashAttention's rule). Outputs are allocated poisoned (NaN), so an element the kernel fails to write
shows up as an error. Inputs are fresh random draws each run.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import diffrt
from diffrt.ops import _alloc, attention, attention_ref
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
