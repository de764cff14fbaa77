"""Bad inputs raise ValueError/TypeError whose message names the argument."""

import math

import numpy as np
import pytest
import torch

from diffrt import ops

X = torch.zeros(2, 4, 8, 8)
M = torch.zeros(2, 4, 8, 8)
M2 = torch.zeros(4, 4, 8, 8)


def raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"message {str(info.value)!r} does not name {name!r}"


@pytest.mark.parametrize(
    "exc, name, args, kwargs",
    [
        (TypeError, "sample", ([1.0], M, 0.5, 0.6), {}),
        (TypeError, "sample", (X.long(), M, 0.5, 0.6), {}),
        (TypeError, "model_output", (X, M.int(), 0.5, 0.6), {}),
        (TypeError, "model_output", (X, M.bfloat16(), 0.5, 0.6), {}),
        (ValueError, "model_output", (X, M[:1], 0.5, 0.6), {}),
        (ValueError, "model_output", (X, M, 0.5, 0.6), {"guidance_scale": 7.5}),  # needs 2N rows
        (ValueError, "model_output", (X, M2[:, :3], 0.5, 0.6), {"guidance_scale": 7.5}),
        (ValueError, "alpha_t", (X, M, math.nan, 0.6), {}),
        (ValueError, "alpha_t", (X, M, 0.0, 0.6), {}),  # ε-prediction needs ᾱ_t > 0
        (ValueError, "alpha_t", (X, M, -0.1, 0.6), {"prediction_type": "v_prediction"}),
        (ValueError, "alpha_prev", (X, M, 0.5, 1.5), {}),
        (ValueError, "alpha_prev", (X, M, 0.5, torch.tensor([0.6, math.inf])), {}),
        (ValueError, "alpha_t", (X, M, torch.tensor([0.5, 0.5, 0.5]), 0.6), {}),
        (TypeError, "alpha_t", (X, M, "0.5", 0.6), {}),
        (ValueError, "eta", (X, M, 0.5, 0.6), {"eta": -0.1}),
        (ValueError, "eta", (X, M, 0.5, 0.6), {"eta": math.inf}),
        (ValueError, "noise", (X, M, 0.5, 0.6), {"eta": 1.0}),
        (ValueError, "noise", (X, M, 0.5, 0.6), {"eta": 1.0, "noise": torch.zeros(2, 4, 8, 7)}),
        (TypeError, "noise", (X, M, 0.5, 0.6), {"eta": 1.0, "noise": torch.zeros(2, 4, 8, 8, dtype=torch.float64)}),
        (ValueError, "eta", (X, M, 0.5, 0.6), {"eta": 5.0, "noise": torch.zeros(2, 4, 8, 8)}),
        (ValueError, "eta", (X, M, 0.6, 0.5), {"eta": 1.0, "noise": torch.zeros(2, 4, 8, 8)}),
        (ValueError, "prediction_type", (X, M, 0.5, 0.6), {"prediction_type": "x0"}),
        (ValueError, "guidance_scale", (X, M2, 0.5, 0.6), {"guidance_scale": math.nan}),
        (ValueError, "guidance_scale", (X, M2, 0.5, 0.6), {"guidance_scale": torch.ones(3)}),
        (ValueError, "guidance_rescale", (X, M2, 0.5, 0.6), {"guidance_scale": 2.0, "guidance_rescale": 1.5}),
        (ValueError, "guidance_rescale", (X, M, 0.5, 0.6), {"guidance_rescale": 0.5}),
        (ValueError, "clip_sample_range", (X, M, 0.5, 0.6), {"clip_sample_range": -1.0}),
        (ValueError, "dynamic_threshold", (X, M, 0.5, 0.6), {"dynamic_threshold": 1.5}),
        (ValueError, "dynamic_threshold", (X, M, 0.5, 0.6), {"dynamic_threshold": 0.9, "clip_sample_range": 1.0}),
        (ValueError, "alpha_t", (X, M, 1.0, 1.0), {"prediction_type": "sample"}),
    ],
)
def test_ddim_step_rejects(exc, name, args, kwargs):
    raises(exc, name, ops.ddim_step, *args, **kwargs)


def test_ddim_step_rejects_mixed_devices():
    meta = torch.zeros(2, 4, 8, 8, device="meta")
    raises(ValueError, "model_output", ops.ddim_step, X, meta, 0.5, 0.6)


def test_invert_step_rejects():
    raises(ValueError, "alpha", ops.ddim_invert_step, X, M, 0.5, -0.1)
    raises(ValueError, "model_output", ops.ddim_invert_step, X, M[:, :2], 0.5, 0.3)


@pytest.mark.parametrize(
    "exc, name, args, kwargs",
    [
        (TypeError, "model_output", (M2.long(), 2.0), {}),
        (ValueError, "model_output", (M2[:3], 2.0), {}),
        (ValueError, "guidance_scale", (M2, math.inf), {}),
        (ValueError, "guidance_scale", (M2, torch.ones(2, 2)), {}),
        (ValueError, "guidance_rescale", (M2, 2.0), {"guidance_rescale": -0.5}),
    ],
)
def test_cfg_combine_rejects(exc, name, args, kwargs):
    raises(exc, name, ops.cfg_combine, *args, **kwargs)


@pytest.mark.parametrize(
    "exc, name, args, kwargs",
    [
        (TypeError, "mask", (torch.zeros(2, 1, 8, 8, dtype=torch.int64), X, M), {}),
        (ValueError, "mask", (torch.zeros(2, 4, 8, 8), X, M), {}),
        (ValueError, "mask", (torch.zeros(3, 1, 8, 8), X, M), {}),
        (ValueError, "mask", (torch.zeros(1, 1, 8, 7), X, M), {}),
        (ValueError, "mask", (torch.full((1, 1, 8, 8), 1.5), X, M), {"check_range": True}),
        (ValueError, "mask", (torch.full((1, 1, 8, 8), math.nan), X, M), {"check_range": True}),
        (ValueError, "b", (torch.zeros(1, 1, 8, 8), X, M[:1]), {}),
        (TypeError, "b", (torch.zeros(1, 1, 8, 8), X, M.bfloat16()), {}),
        (TypeError, "a", (torch.zeros(1, 1, 8, 8), X.int(), M), {}),
        (ValueError, "a", (torch.zeros(1, 1, 8, 8), X[0], M[0]), {}),
    ],
)
def test_mask_blend_rejects(exc, name, args, kwargs):
    raises(exc, name, ops.mask_blend, *args, **kwargs)


@pytest.mark.parametrize(
    "exc, name, args, kwargs",
    [
        (ValueError, "eps_query", (torch.zeros(4, 8, 8), torch.zeros(4, 8, 8)), {}),
        (ValueError, "eps_ref", (torch.zeros(3, 4, 8, 8), torch.zeros(2, 4, 8, 8)), {}),
        (TypeError, "eps_ref", (torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8).bfloat16()), {}),
        (TypeError, "eps_query", (torch.zeros(3, 4, 8, 8, dtype=torch.int32), torch.zeros(3, 4, 8, 8)), {}),
        (ValueError, "clamp_ratio", (torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)), {"clamp_ratio": 0.0}),
        (ValueError, "threshold", (torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)), {"threshold": 2.0}),
        (ValueError, "eps_query", (torch.zeros(0, 4, 8, 8), torch.zeros(0, 4, 8, 8)), {}),
    ],
)
def test_diffedit_mask_rejects(exc, name, args, kwargs):
    raises(exc, name, ops.diffedit_mask, *args, **kwargs)


def test_explicit_backend_that_cannot_run_raises_with_reason():
    with pytest.raises(ops.UnsupportedBackendError, match="dtype float64 is not supported"):
        ops.ddim_step(X.double(), M.double(), 0.5, 0.6, backend="cpu")
    with pytest.raises(ops.UnsupportedBackendError, match="has no kernel|without CUDA|no CUDA device"):
        ops.cfg_combine(M2, 2.0, backend="cuda")
    with pytest.raises(ops.UnsupportedBackendError, match="unknown backend"):
        ops.mask_blend(torch.zeros(1, 1, 8, 8), X, M, backend="fast")
    assert issubclass(ops.UnsupportedBackendError, ValueError)


def test_backend_shape_limits_pick_the_next_backend_or_name_the_reason(monkeypatch):
    """An implementation that refuses some inputs (a Limited) is passed over in the automatic order, and its
    reason is part of the error when nothing can run them."""
    from diffrt.ops import _backend

    monkeypatch.setattr(_backend, "_CHOSEN", {})
    impls = {"cpu": _backend.Limited(lambda: "cpu", lambda n: f"n = {n} is more than 2" if n > 2 else None),
             "torch": _backend.Limited(lambda: "torch", lambda n: f"n = {n} is more than 3" if n > 3 else None)}
    cpu = torch.device("cpu")
    assert _backend.dispatch("op", impls, cpu, torch.float32, None, (2,))() == "cpu"
    assert _backend.dispatch("op", impls, cpu, torch.float32, None, (3,))() == "torch"
    assert _backend.dispatch("op", impls, cpu, torch.float32, None, (1,))() == "cpu"
    nothing = r"^op: no backend can run these inputs \(cpu: n = 4 is more than 2 \| torch: n = 4 is more than 3\)"
    with pytest.raises(ops.UnsupportedBackendError, match=nothing):
        _backend.dispatch("op", impls, cpu, torch.float32, None, (4,))
    with pytest.raises(ops.UnsupportedBackendError, match=r"^op: backend 'cpu' cannot run these inputs: n = 3 is more"):
        _backend.dispatch("op", impls, cpu, torch.float32, "cpu", (3,))
    assert _backend.dispatch("op", impls, cpu, torch.float64, None, (3,))() == "torch"  # float64: no CPU kernel


def test_set_cpu_isa_rejects_unknown_name():
    from diffrt import _C

    with pytest.raises(ValueError, match="unknown CPU ISA"):
        _C.set_cpu_isa("sse9")


# Scalars may be any real number: Python int/float, numpy scalars, 0-d tensors (bool, NaN and inf are errors).
REAL_SCALARS = [
    lambda v: v, lambda v: np.float32(v), lambda v: np.float64(v), lambda v: torch.tensor(v),
    lambda v: torch.tensor(v, dtype=torch.float64), lambda v: torch.tensor(v, dtype=torch.bfloat16),
]
DDIM_SCALARS = {
    "alpha_t": 0.375, "alpha_prev": 0.625, "eta": 0.5, "guidance_scale": 7.5, "guidance_rescale": 0.5,
    "dynamic_threshold": 0.875, "dynamic_threshold_max": 2.5,
}


def _ddim_with(**overrides):
    kw = {k: v for k, v in DDIM_SCALARS.items() if k not in ("alpha_t", "alpha_prev")}
    kw.update({k: v for k, v in overrides.items() if k not in ("alpha_t", "alpha_prev")})
    a_t, a_prev = overrides.get("alpha_t", DDIM_SCALARS["alpha_t"]), overrides.get("alpha_prev", DDIM_SCALARS["alpha_prev"])
    torch.manual_seed(0)
    x, m, z = torch.randn(2, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.randn(2, 4, 8, 8)
    return ops.ddim_step(x, m, a_t, a_prev, noise=z, **kw)


@pytest.mark.parametrize("make", REAL_SCALARS)
@pytest.mark.parametrize("name", list(DDIM_SCALARS))
def test_ddim_step_accepts_any_real_scalar(make, name):
    assert torch.equal(_ddim_with(**{name: make(DDIM_SCALARS[name])}), _ddim_with())


@pytest.mark.parametrize("name", list(DDIM_SCALARS))
@pytest.mark.parametrize(
    "exc, value", [(TypeError, True), (TypeError, np.bool_(True)), (TypeError, torch.tensor(True)),
                   (ValueError, np.float32("nan")), (ValueError, torch.tensor(math.inf)), (ValueError, np.float64("-inf"))],
)
def test_ddim_step_rejects_bool_and_non_finite_scalars(name, exc, value):
    raises(exc, name, _ddim_with, **{name: value})


@pytest.mark.parametrize("make", REAL_SCALARS)
def test_other_ops_accept_any_real_scalar(make):
    m = torch.randn(4, 3, 8, 8)
    assert torch.equal(ops.cfg_combine(m, make(7.5), guidance_rescale=make(0.5)), ops.cfg_combine(m, 7.5, guidance_rescale=0.5))
    q, r = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert torch.equal(ops.diffedit_mask(q, r, clamp_ratio=make(2.5), threshold=make(0.5)),
                       ops.diffedit_mask(q, r, clamp_ratio=2.5, threshold=0.5))
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(ops.ddim_step(x, x, 0.5, 0.75, clip_sample_range=make(1.5)),
                       ops.ddim_step(x, x, 0.5, 0.75, clip_sample_range=1.5))


@pytest.mark.parametrize("value", [0.5, 0.999, 1e-3])
def test_dynamic_threshold_max_below_one_is_accepted(value):
    """diffusers' s = clamp(quantile, min=1, max=M) is M when M < 1 (torch.clamp with min > max gives max)."""
    x, m = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    _, x0 = ops.ddim_step(x, m, 0.5, 0.75, dynamic_threshold=0.9, dynamic_threshold_max=value, return_x0=True)
    assert x0.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_dynamic_threshold_max_must_be_positive(value):
    raises(ValueError, "dynamic_threshold_max", ops.ddim_step, X, M, 0.5, 0.6, dynamic_threshold=0.9,
           dynamic_threshold_max=value)
