"""The seam between diffrt.ops and the compiled kernels: every field of every argument struct arrives in its
own slot. Each op runs through its own Python code path with the kernel replaced by ``_C.echo``, which
returns the struct exactly as the kernel would receive it; the inputs are chosen so that every field of one
type holds a distinct value, so passing one field in another's slot fails here."""

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from diffrt import _C, ops
from diffrt.ops import _launch

ROOT = Path(__file__).resolve().parents[1]
HEADERS = [ROOT / "csrc" / "ops.h", ROOT / "csrc" / "attention.h", ROOT / "csrc" / "cpu" / "downsample_kernels.h",
           ROOT / "csrc" / "norm.h"]
THREADS = torch.get_num_threads()


def _struct_members() -> dict:
    """{struct name: member names in declaration order} for every ``struct *Args`` of the kernel headers."""
    structs = {}
    for header in HEADERS:
        text = re.sub(r"//[^\n]*", "", header.read_text())
        for name, body in re.findall(r"struct (\w+Args) \{(.*?)\n\};", text, re.S):
            members = []
            for declaration in body.split(";"):
                declaration = " ".join(declaration.split())
                if not declaration:
                    continue
                first, *rest = declaration.split(",")
                members += [re.findall(r"\w+", first)[-1]] + [re.findall(r"\w+", d)[-1] for d in rest]
            structs[name] = members
    return structs


@pytest.fixture
def echoed(monkeypatch):
    """Every compiled kernel replaced by _C.echo: returns the list of (kernel name, fields) the ops launched."""
    calls = []
    for kernel in _launch.KERNELS.values():
        monkeypatch.setattr(kernel, "cpu", lambda args, num_threads, name=kernel.name: calls.append(
            (name, _C.echo(args, num_threads))))
    return calls


def _only(calls, name):
    assert [n for n, _ in calls] == [name], calls
    return calls[0][1]


def _check(fields, expected, *, equal_by_nature=()):
    """fields (the echo) == expected field by field. The values the ops set must be distinct within a type
    (0 aside), so that the comparison would catch any two of them exchanged — except the fields named in
    equal_by_nature (another case must then tell them apart); num_threads is the launch's."""
    assert set(fields) == set(expected), set(fields) ^ set(expected)
    for kind in (int, float, tuple):
        values = [v for k, v in expected.items()
                  if type(v) is kind and v not in (0, 0.0) and k != "num_threads" and k not in equal_by_nature[1:]]
        assert len(values) == len(set(values)), f"the test's own {kind.__name__} sentinels repeat: {sorted(values)}"
    wrong = {k: (fields[k], v) for k, v in expected.items() if fields[k] != v}
    assert not wrong, "fields in the wrong slot (got, want): " + repr(wrong)


def test_every_struct_member_is_a_field():
    """The binding tables (csrc/bindings/module.cpp) list every member of every struct, in order: a member
    added to a struct and not bound would reach the kernel as zero."""
    members = _struct_members()
    assert set(members) == {"DdimStepArgs", "CfgCombineArgs", "MaskBlendArgs", "DiffEditMaskArgs", "EulerStepArgs",
                            "DpmSolver2mStepArgs", "AttentionForwardArgs", "AttentionBackwardArgs", "DownsampleCondArgs",
                            "GroupNormArgs", "LayerNormArgs", "GegluArgs", "TimestepEmbeddingArgs",
                            "TimestepMlpArgs"}
    for name, names in members.items():
        settable = list(getattr(_C, name).fields)
        launch_or_derived = {"num_threads", "out_height", "out_width"}
        assert settable == [m for m in names if m not in launch_or_derived], name
        assert "num_threads" in names, name


def test_ddim_step_fields(echoed):
    n, shape = 3, (3, 2, 5, 7)
    x, noise = torch.randn(shape), torch.randn(shape)
    model = torch.randn(2 * n, *shape[1:])
    alpha_t, alpha_prev = torch.tensor([0.31, 0.32, 0.33]), torch.tensor([0.71, 0.72, 0.73])
    out, x0 = ops.ddim_step(
        x, model, alpha_t, alpha_prev, eta=0.125, noise=noise, prediction_type="v_prediction",
        dynamic_threshold=0.875, dynamic_threshold_max=1.75, guidance_scale=torch.tensor([4.5, 5.5, 6.5]),
        guidance_rescale=0.625, use_clipped_model_output=True, return_x0=True)
    numel = 2 * 5 * 7
    _check(_only(echoed, "ddim_step"), dict(
        dtype=_C.DType.float32, batch=n, numel=numel, sample=x.data_ptr(), model=model.data_ptr(),
        model_cond=model.data_ptr() + n * numel * 4, noise=noise.data_ptr(), out=out.data_ptr(), out_x0=x0.data_ptr(),
        alpha_t=alpha_t.double().tolist(), alpha_prev=alpha_prev.double().tolist(), guidance_scale=[4.5, 5.5, 6.5],
        eta=0.125, guidance_rescale=0.625, prediction=_C.Prediction.v_prediction, clip=_C.ClipMode.dynamic,
        clip_range=0.0, dynamic_quantile=0.875, dynamic_max=1.75, use_clipped_model_output=True,
        num_threads=THREADS))


def test_ddim_step_fields_unguided_with_a_fixed_clip(echoed):
    x, model = torch.randn(2, 3, 4, 5, dtype=torch.bfloat16), torch.randn(2, 3, 4, 5, dtype=torch.bfloat16)
    out = ops.ddim_step(x, model, 0.25, 0.5, prediction_type="sample", clip_sample_range=1.375)
    _check(_only(echoed, "ddim_step"), dict(
        dtype=_C.DType.bfloat16, batch=2, numel=60, sample=x.data_ptr(), model=model.data_ptr(), model_cond=0,
        noise=0, out=out.data_ptr(), out_x0=0, alpha_t=[0.25, 0.25], alpha_prev=[0.5, 0.5], guidance_scale=None,
        eta=0.0, guidance_rescale=0.0, prediction=_C.Prediction.sample, clip=_C.ClipMode.fixed, clip_range=1.375,
        dynamic_quantile=0.0, dynamic_max=math.inf, use_clipped_model_output=False, num_threads=THREADS))


def test_cfg_combine_fields(echoed):
    model = torch.randn(6, 2, 5, 7, dtype=torch.bfloat16)
    out = ops.cfg_combine(model, torch.tensor([4.5, 5.5, 6.5]), guidance_rescale=0.625)
    _check(_only(echoed, "cfg_combine"), dict(
        dtype=_C.DType.bfloat16, batch=3, numel=70, uncond=model.data_ptr(), cond=model.data_ptr() + 3 * 70 * 2,
        out=out.data_ptr(), guidance_scale=[4.5, 5.5, 6.5], guidance_rescale=0.625, num_threads=THREADS))


@pytest.mark.parametrize("mask_batch", [3, 1])
def test_mask_blend_fields(echoed, mask_batch):
    a, b, mask = torch.randn(3, 2, 5, 7), torch.randn(3, 2, 5, 7), torch.rand(mask_batch, 1, 5, 7)
    out = ops.mask_blend(mask, a, b)
    _check(_only(echoed, "mask_blend"), dict(
        dtype=_C.DType.float32, batch=3, channels=2, spatial=35, mask=mask.data_ptr(),
        mask_batch_stride=35 if mask_batch == 3 else 0, a=a.data_ptr(), b=b.data_ptr(), out=out.data_ptr(),
        num_threads=THREADS), equal_by_nature=("spatial", "mask_batch_stride"))  # one mask per sample: stride = spatial


@pytest.mark.parametrize("threshold", [0.375, None])
def test_diffedit_mask_fields(echoed, threshold):
    q, r = torch.randn(3, 4, 2, 5, 7), torch.randn(3, 4, 2, 5, 7)
    out = ops.diffedit_mask(q, r, clamp_ratio=2.5, threshold=threshold)
    _check(_only(echoed, "diffedit_mask"), dict(
        dtype=_C.DType.float32, batch=3, draws=4, channels=2, spatial=35, eps_query=q.data_ptr(), eps_ref=r.data_ptr(),
        out=out.data_ptr(), clamp_ratio=2.5, threshold=-1.0 if threshold is None else threshold, num_threads=THREADS))


@pytest.mark.parametrize("ancestral", [True, False])
def test_euler_step_fields(echoed, ancestral):
    x, model, noise = torch.randn(3, 2, 5, 7), torch.randn(3, 2, 5, 7), torch.randn(3, 2, 5, 7)
    sigma, sigma_next = torch.tensor([3.25, 2.75, 1.5]), torch.tensor([1.25, 0.75, 0.5])
    out, x0 = ops.euler_step(x, model, sigma, sigma_next, noise=noise if ancestral else None,
                             prediction_type="v_prediction", return_x0=True)
    _check(_only(echoed, "euler_step"), dict(
        dtype=_C.DType.float32, batch=3, numel=70, sample=x.data_ptr(), model=model.data_ptr(),
        noise=noise.data_ptr() if ancestral else 0, out=out.data_ptr(), out_x0=x0.data_ptr(),
        sigma=sigma.double().tolist(), sigma_next=sigma_next.double().tolist(),
        prediction=_C.Prediction.v_prediction, num_threads=THREADS))


@pytest.mark.parametrize("second_order", [True, False])
def test_dpm_solver_2m_step_fields(echoed, second_order):
    x, model, last = (torch.randn(3, 2, 5, 7, dtype=torch.bfloat16) for _ in range(3))
    sigma, sigma_next = torch.tensor([3.25, 2.75, 1.5]), torch.tensor([1.25, 0.75, 0.5])
    sigma_last = torch.tensor([5.5, 4.5, 3.5])
    kw = dict(x0_last=last, sigma_last=sigma_last, solver_type="heun") if second_order else {}
    out = ops.dpm_solver_2m_step(x, model, sigma, sigma_next, prediction_type="sample", **kw)
    _check(_only(echoed, "dpm_solver_2m_step"), dict(
        dtype=_C.DType.bfloat16, batch=3, numel=70, sample=x.data_ptr(), model=model.data_ptr(),
        x0_last=last.data_ptr() if second_order else 0, out=out.data_ptr(), out_x0=0,
        sigma=sigma.double().tolist(), sigma_next=sigma_next.double().tolist(),
        sigma_last=sigma_last.double().tolist() if second_order else None, prediction=_C.Prediction.sample,
        heun=second_order, num_threads=THREADS))


def _attention_inputs():
    """q, k and v views of three layouts (out is dense), so that every stride triple differs."""
    q = torch.randn(2, 5, 3, 8).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 7, 3, 8).transpose(1, 2).requires_grad_()  # diffusers' (B, L, H, d) layout
    v = torch.randn(7, 2, 3, 8).permute(1, 2, 0, 3).requires_grad_()
    mask = torch.rand(2, 7) > 0.3
    return q, k, v, mask


def test_attention_forward_and_backward_fields(echoed):
    q, k, v, mask = _attention_inputs()
    out = ops.attention(q, k, v, key_padding_mask=mask, scale=0.3125)
    forward = _only(echoed, "attention_forward")
    sizes = dict(dtype=_C.DType.float32, batch=2, heads=3, q_len=5, kv_len=7, head_dim=8)
    strides = dict(q_strides=q.stride()[:3], k_strides=k.stride()[:3], v_strides=v.stride()[:3])
    lse = forward["lse"]
    assert lse not in (0, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr())  # saved for the backward
    _check(forward, dict(
        **sizes, q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), **strides, key_padding_mask=mask.data_ptr(),
        out=out.data_ptr(), out_strides=out.stride()[:3], lse=lse, scale=0.3125, num_threads=THREADS))

    echoed.clear()
    dout = torch.randn(3, 2, 5, 8).transpose(0, 1)  # strides of its own
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    _check(_only(echoed, "attention_backward"), dict(
        **sizes, q=q.data_ptr(), k=k.data_ptr(), v=v.data_ptr(), out=out.data_ptr(), dout=dout.data_ptr(),
        **strides, out_strides=out.stride()[:3], dout_strides=dout.stride()[:3], key_padding_mask=mask.data_ptr(),
        lse=lse, dq=dq.data_ptr(), dk=dk.data_ptr(), dv=dv.data_ptr(), scale=0.3125, num_threads=THREADS))


def test_attention_forward_fields_without_mask_or_lse(echoed):
    q, k, v, _ = (t.detach() if isinstance(t, torch.Tensor) else t for t in _attention_inputs())
    out = ops.attention(q, k, v)
    fields = _only(echoed, "attention_forward")
    assert (fields["key_padding_mask"], fields["lse"], fields["out"]) == (0, 0, out.data_ptr())
    assert fields["scale"] == pytest.approx(1 / math.sqrt(8), rel=1e-7)  # float32 in the struct


def test_downsample_cond_fields(echoed):
    image, mask = torch.randn(6, 10, 13, 17), torch.rand(6, 1, 13, 17)
    weight, bias = torch.randn(8, 11, 7, 7), torch.randn(8)
    out = torch.zeros(6, 19, 4, 5)  # conv output (6, 8, 4, 5) goes into channels 9..16
    result = ops.downsample_cond(image, mask, weight, bias, stride=3, padding=2, out=out, channel_offset=9)
    assert result is out
    _check(_only(echoed, "downsample_cond"), dict(
        dtype=_C.DType.float32, batch=6, image_channels=10, mask_channels=1, height=13, width=17,
        image=image.data_ptr(), mask=mask.data_ptr(), mask_batch_stride=13 * 17, weight=weight.data_ptr(),
        bias=bias.data_ptr(), out_channels=8, kernel_size=7, stride=3, padding=2, out_height=4, out_width=5,
        out=out.data_ptr(), out_batch_stride=19 * 20, out_channel_stride=20, channel_offset=9, num_threads=THREADS))


@pytest.mark.parametrize("channels_last, silu", [(False, True), (True, False)])  # the two bools told apart
def test_group_norm_fields(echoed, channels_last, silu):
    x = torch.randn(3, 6, 5, 7)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight, bias = torch.randn(6), torch.randn(6)  # float32: the kernel reads these very tensors
    out = ops.group_norm(x, 2, weight, bias, 0.125, activation="silu" if silu else None)
    _check(_only(echoed, "group_norm"), dict(
        dtype=_C.DType.float32, batch=3, channels=6, spatial=35, groups=2, channels_last=channels_last,
        x=x.data_ptr(), weight=weight.data_ptr(), bias=bias.data_ptr(), out=out.data_ptr(), eps=0.125, silu=silu,
        num_threads=THREADS))


def test_group_norm_fields_without_affine(echoed):
    x = torch.randn(2, 4, 3, dtype=torch.bfloat16)
    out = ops.group_norm(x, 4, eps=0.25)
    _check(_only(echoed, "group_norm"), dict(
        dtype=_C.DType.bfloat16, batch=2, channels=4, spatial=3, groups=4, channels_last=False, x=x.data_ptr(),
        weight=0, bias=0, out=out.data_ptr(), eps=0.25, silu=False, num_threads=THREADS),
        equal_by_nature=("channels", "groups"))  # groups of one channel; the case above tells them apart


def test_layer_norm_fields(echoed):
    x, weight, bias = torch.randn(3, 5, 7), torch.randn(7), torch.randn(7)
    out = ops.layer_norm(x, weight, bias, 0.375)
    _check(_only(echoed, "layer_norm"), dict(
        dtype=_C.DType.float32, rows=15, dim=7, x=x.data_ptr(), weight=weight.data_ptr(), bias=bias.data_ptr(),
        out=out.data_ptr(), eps=0.375, num_threads=THREADS))


def test_geglu_fields(echoed):
    x = torch.randn(3, 5, 14, dtype=torch.bfloat16)
    out = ops.geglu(x)
    _check(_only(echoed, "geglu"), dict(
        dtype=_C.DType.bfloat16, rows=15, dim=7, x=x.data_ptr(), out=out.data_ptr(), num_threads=THREADS))


def test_timestep_embedding_fields(echoed):
    t = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)  # float64: the kernel reads this very tensor
    out = ops.timestep_embedding(t, 9, True, 0.25, 1.5, 100.0, dtype=torch.bfloat16)
    _check(_only(echoed, "timestep_embedding"), dict(
        dtype=_C.DType.bfloat16, batch=3, dim=9, timesteps=t.data_ptr(), out=out.data_ptr(), flip_sin_to_cos=True,
        downscale_freq_shift=0.25, scale=1.5, max_period=100.0, num_threads=THREADS))


# ---- the Python face of the structs -------------------------------------------------------------------


def test_fields_are_typed_and_named_in_errors():
    args = _C.DdimStepArgs()
    with pytest.raises(TypeError, match=r"^DdimStepArgs\.prediction: expected diffrt\._C\.Prediction, got int"):
        args.prediction = 1
    with pytest.raises(TypeError, match=r"^DdimStepArgs\.clip: expected diffrt\._C\.ClipMode, got .*Prediction"):
        args.clip = _C.Prediction.epsilon
    with pytest.raises(TypeError, match=r"^DdimStepArgs\.batch: expected an int, got float"):
        args.batch = 2.0
    with pytest.raises(TypeError, match=r"^DdimStepArgs\.use_clipped_model_output: expected a bool, got int"):
        args.use_clipped_model_output = 1
    with pytest.raises(TypeError, match=r"^DdimStepArgs\.sample: expected an address"):
        args.sample = -8
    with pytest.raises(AttributeError, match="etta"):
        args.etta = 0.0
    with pytest.raises(TypeError, match="has no field 'etta'"):
        _C.DdimStepArgs(etta=0.0)
    with pytest.raises(TypeError, match="keyword arguments only"):
        _C.MaskBlendArgs(1)


def test_a_kernel_refuses_a_required_field_never_set():
    x = torch.zeros(1, 4)
    args = _C.MaskBlendArgs(dtype=_C.DType.float32, batch=1, channels=1, spatial=4, mask=x.data_ptr(), a=x.data_ptr(),
                            b=x.data_ptr(), out=x.data_ptr())
    with pytest.raises(TypeError, match=r"^MaskBlendArgs\.mask_batch_stride was not set"):
        _C.mask_blend(args, 1)
    args.mask_batch_stride = 0
    _C.mask_blend(args, 1)
    with pytest.raises(TypeError, match="expected diffrt._C.MaskBlendArgs, got diffrt._C.CfgCombineArgs"):
        _C.mask_blend(_C.CfgCombineArgs(), 1)
    with pytest.raises(ValueError, match=r"guidance_scale must hold one value per sample \(batch = 2\), got 1"):
        _C.echo(_C.CfgCombineArgs(dtype=_C.DType.float32, batch=2, numel=1, uncond=0, cond=0, out=0,
                                  guidance_scale=[1.0], guidance_rescale=0.0), 1)


def test_the_uniform_ddim_entry_checks_its_arguments():
    """_C.ddim_step_uniform (the sampling loop's one-call DDIM step) refuses what the argument structs refuse."""
    x, m, out = torch.randn(2, 8), torch.randn(4, 8), torch.empty(2, 8)
    good = [x.data_ptr(), m.data_ptr(), out.data_ptr(), _C.DType.float32, 2, 8, 0.4, 0.6, 3.0, _C.Prediction.epsilon, 1]
    _C.ddim_step_uniform(*good)
    torch.testing.assert_close(out, ops.ddim_step_ref(x, m, 0.4, 0.6, guidance_scale=3.0))
    with pytest.raises(TypeError, match="takes 11 positional arguments, got 10"):
        _C.ddim_step_uniform(*good[:10])
    for i, bad, error, match in ((0, 0, ValueError, "need addresses"), (4, -1, ValueError, "must be >= 0"),
                                 (3, 1, TypeError, "expected diffrt._C.DType"), (6, "0.4", TypeError, "a float"),
                                 (9, 0, TypeError, "expected diffrt._C.Prediction"),
                                 (3, _C.DType.float16, ValueError, "do not take dtype")):
        with pytest.raises(error, match=match):
            _C.ddim_step_uniform(*good[:i], bad, *good[i + 1:])


def test_codes_come_from_C():
    from diffrt.ops import _codes

    assert _codes.DTYPES == {torch.float32: _C.DType.float32, torch.bfloat16: _C.DType.bfloat16,
                             torch.float16: _C.DType.float16}
    assert ops.PREDICTION_TYPES == ("epsilon", "v_prediction", "sample") == tuple(_C.Prediction.__members__)


def test_stub_describes_the_module():
    """python/diffrt/_C.pyi declares every public name of _C (the CUDA entry points only exist in builds with
    CUDA) and, for each argument struct, exactly its fields."""
    stub = ast.parse((ROOT / "python" / "diffrt" / "_C.pyi").read_text())
    declared, classes = set(), {}
    for node in stub.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            declared.add(node.target.id)
        elif isinstance(node, ast.Assign):
            declared.update(t.id for t in node.targets)
        if isinstance(node, ast.ClassDef) and node.name.endswith("Args"):
            classes[node.name] = [n.target.id for n in node.body
                                  if isinstance(n, ast.AnnAssign) and "ClassVar" not in ast.unparse(n.annotation)]
    declared = {n for n in declared if not n.startswith("_")}
    public = {n for n in dir(_C) if not n.startswith("_")}
    cuda_only = {n for n in declared if n.startswith("cuda_")}
    assert public - declared == set()
    assert declared - public - {"Strides"} == (set() if _C.build_info()["cuda"] else cuda_only)
    for name, fields in classes.items():
        assert fields == list(getattr(_C, name).fields), name


def test_timestep_mlp_fields(echoed):
    t = torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64)  # float64: the kernel reads this very tensor
    w1, b1 = torch.randn(5, 9, dtype=torch.float16), torch.randn(5, dtype=torch.float16)
    w2, b2 = torch.randn(4, 5, dtype=torch.float16), torch.randn(4, dtype=torch.float16)
    out = ops.timestep_mlp(t, w1, b1, w2, b2, flip_sin_to_cos=True, downscale_freq_shift=0.25, scale=1.5,
                           max_period=100.0)
    _check(_only(echoed, "timestep_mlp"), dict(
        dtype=_C.DType.float16, batch=3, in_dim=9, hidden_dim=5, out_dim=4, timesteps=t.data_ptr(),
        weight_1=w1.data_ptr(), bias_1=b1.data_ptr(), weight_2=w2.data_ptr(), bias_2=b2.data_ptr(),
        out=out.data_ptr(), flip_sin_to_cos=True, downscale_freq_shift=0.25, scale=1.5, max_period=100.0,
        num_threads=THREADS))
