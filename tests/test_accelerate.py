"""accelerate(pipe) on tiny Stable Diffusion pipelines built in code: the accelerated pipeline gives the
untouched one's images to float32 rounding, undo() restores it bitwise, and bad calls fail loudly.

Tolerances: accelerated vs untouched images (in [0, 1]) within tests._helpers.assert_close_to_ref at
float32 with scale 1 (eps·|x| + 64·eps ≈ 7.7e-6); measured ≤ 2e-6. The OpenVINO backend (float32
inference precision) within 10× that (OV_SCALE); measured ≤ 3e-6.
"""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from diffrt import NoiseSchedule, ops
from diffrt.integrations import accelerate as acc
from diffrt.integrations import schedulers
from diffrt.integrations.diffusers import DiffrtAttnProcessor, accelerate, accelerate_denoiser, undo
from tests._helpers import assert_close_to_ref

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' Stable Diffusion pipeline modules import it

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

OV_SCALE = 10.0


def components(in_channels=4):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1).eval()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        steps_offset=1)
    return dict(unet=unet, vae=vae, scheduler=scheduler)


def pipeline(kind="text2img", **overrides):
    parts = {**components(9 if kind == "inpaint" else 4), **overrides}
    cls = {"text2img": diffusers.StableDiffusionPipeline, "img2img": diffusers.StableDiffusionImg2ImgPipeline,
           "inpaint": diffusers.StableDiffusionInpaintPipeline}[kind]
    pipe = cls(text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeds():
    g = torch.Generator().manual_seed(1)
    return dict(prompt_embeds=torch.randn(1, 5, 32, generator=g), negative_prompt_embeds=torch.randn(1, 5, 32, generator=g))


def images(b=1, seed=2):
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def run(pipe, kind="text2img", steps=4):
    kwargs = dict(**embeds(), num_inference_steps=steps, guidance_scale=7.5, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    if kind == "text2img":
        kwargs.update(height=32, width=32, eta=0.5)  # η > 0: the fused step's noise is diffusers' draw
    elif kind == "img2img":
        kwargs.update(image=images(), strength=0.7)
    elif kind == "inpaint":
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., 8:24, 4:20] = 1
        kwargs.update(image=images(), mask_image=mask, height=32, width=32, strength=1.0)
    with torch.no_grad():
        return pipe(**kwargs).images


@pytest.mark.parametrize("name, config", [("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
                                          ("EulerDiscreteScheduler", {}), ("EulerAncestralDiscreteScheduler", {})])
def test_the_other_schedulers_users_pick_are_swapped_for_fused_ones(name, config):
    base = components()["scheduler"].config
    pipe = pipeline(scheduler=getattr(diffusers, name).from_config(base, **config))
    want = run(pipe)  # ancestral noise: the same generator draws the same noise in both
    accelerate(pipe)
    assert type(pipe.scheduler) is getattr(schedulers, name)
    assert_close_to_ref(run(pipe), want, dtype=torch.float32, scale=1.0)
    undo(pipe)
    third_order = pipeline(scheduler=diffusers.DPMSolverMultistepScheduler.from_config(base, solver_order=3))
    accelerate(third_order)  # no kernel for it: left, and said why
    assert type(third_order.scheduler) is diffusers.DPMSolverMultistepScheduler
    assert "solver_order=3" in third_order._diffrt_report.schedulers_left["scheduler"]


@pytest.mark.parametrize("kind", ["text2img", "img2img", "inpaint"])
def test_accelerated_pipeline_matches_untouched_and_undo_is_exact(kind):
    pipe = pipeline(kind)
    processors = dict(pipe.unet.attn_processors)
    vae_processors = dict(pipe.vae.attn_processors)
    scheduler = pipe.scheduler
    want = run(pipe, kind)

    assert accelerate(pipe) is pipe
    report = pipe._diffrt_report
    assert len(report.attention_swapped) == len(processors) + len(vae_processors) and not report.attention_left
    assert all(isinstance(p, DiffrtAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert all(isinstance(p, DiffrtAttnProcessor) for p in pipe.vae.attn_processors.values())
    assert type(pipe.scheduler) is schedulers.DDIMScheduler
    assert pipe.scheduler.config == scheduler.config
    got = run(pipe, kind)
    assert_close_to_ref(got, want, dtype=torch.float32, scale=1.0)

    assert undo(pipe) is pipe
    assert pipe.scheduler is scheduler and pipe.config["scheduler"] == ("diffusers", "DDIMScheduler")
    restored = pipe.unet.attn_processors
    assert all(restored[k] is v for k, v in processors.items())
    assert all(pipe.vae.attn_processors[k] is v for k, v in vae_processors.items())
    assert not hasattr(pipe, "_diffrt_report")
    assert torch.equal(run(pipe, kind), want)


def diffedit_pipeline():
    from diffusers.pipelines.deprecated.stable_diffusion_diffedit.pipeline_stable_diffusion_diffedit import (
        StableDiffusionDiffEditPipeline,
    )

    parts = components()
    pipe = StableDiffusionDiffEditPipeline(
        text_encoder=None, tokenizer=None, inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(
            parts["scheduler"].config), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffedit(pipe):
    g = torch.Generator().manual_seed(1)
    source, target, empty = (torch.randn(1, 5, 32, generator=g) for _ in range(3))
    image = images()
    with torch.no_grad():
        mask = pipe.generate_mask(image=image, source_prompt_embeds=source, target_prompt_embeds=target,
                                  source_negative_prompt_embeds=empty, target_negative_prompt_embeds=empty,
                                  num_maps_per_mask=2, num_inference_steps=4, generator=torch.Generator().manual_seed(3),
                                  output_type="np")
        latents = pipe.invert(image=image, prompt_embeds=source, negative_prompt_embeds=empty, num_inference_steps=4,
                              inpaint_strength=0.75, generator=torch.Generator().manual_seed(4)).latents
        out = pipe(mask_image=mask, image_latents=latents, prompt_embeds=target, negative_prompt_embeds=empty,
                   num_inference_steps=4, inpaint_strength=0.75, output_type="pt",
                   generator=torch.Generator().manual_seed(5)).images
    return torch.from_numpy(mask), latents, out


def test_diffedit_pipeline_matches_untouched_with_both_schedulers_fused():
    pipe = diffedit_pipeline()
    inverse = pipe.inverse_scheduler
    want_mask, want_latents, want = run_diffedit(pipe)
    assert 0 < want_mask.sum() < want_mask.numel()  # a real mask
    accelerate(pipe)
    assert set(pipe._diffrt_report.schedulers_swapped) == {"scheduler", "inverse_scheduler"}
    assert type(pipe.inverse_scheduler).__name__ == "FusedDDIMInverseScheduler"
    mask, latents, got = run_diffedit(pipe)
    assert torch.equal(mask, want_mask)
    # Inverting and regenerating amplifies rounding: x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ scales an error by 1/√ᾱ on the way
    # to noise and again on the way back, so by up to 1/ᾱ at the noisiest timestep. Measured on AVX2 (torch's
    # convolutions round differently per ISA): 3.0e-5 in the inverted latents, 5.7e-5 in the output, about
    # 0.3 of each bound below.
    alpha_noisiest = float(pipe.scheduler.alphas_cumprod[pipe.scheduler.timesteps[0]])
    assert_close_to_ref(latents, want_latents, dtype=torch.float32,
                        scale=want_latents.abs().max().item() / alpha_noisiest ** 0.5)
    assert_close_to_ref(got, want, dtype=torch.float32, scale=1.0 / alpha_noisiest)
    undo(pipe)
    assert pipe.inverse_scheduler is inverse
    again = run_diffedit(pipe)
    assert all(torch.equal(a, b) for a, b in zip(again, (want_mask, want_latents, want)))


def test_dtype_casts_once_and_undo_restores_the_original_weight_tensors(monkeypatch):
    monkeypatch.setenv("DIFFRT_CPU_BF16", "1")  # bfloat16 on any CPU (else float32 where bf16 is slow)
    pipe = pipeline()
    want = run(pipe)
    params = {n: (p, p.data_ptr()) for n, p in pipe.unet.named_parameters()}
    accelerate(pipe, dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe._diffrt_report.dtype == torch.bfloat16
    got = run(pipe)
    assert got.dtype == torch.bfloat16  # as diffusers' pipelines give after pipe.to(torch.bfloat16)
    # bfloat16 weights and activations: 8 mantissa bits through 4 steps, UNet and VAE
    assert (got.float() - want).abs().max() < 0.1
    undo(pipe)
    assert all(p is params[n][0] and p.data_ptr() == params[n][1] and p.dtype == torch.float32
               for n, p in pipe.unet.named_parameters())
    assert torch.equal(run(pipe), want)


def test_accelerating_twice_is_an_error_and_undo_needs_an_accelerated_pipeline():
    pipe = pipeline()
    with pytest.raises(RuntimeError, match="was not accelerated"):
        undo(pipe)
    accelerate(pipe)
    with pytest.raises(RuntimeError, match=r"already accelerated; call diffrt.integrations.diffusers.undo\(pipe\)"):
        accelerate(pipe)
    undo(pipe)
    accelerate(pipe)  # after undo, again
    undo(pipe)
    with pytest.raises(RuntimeError, match="was not accelerated"):
        undo(pipe)


def test_bad_arguments_are_refused_by_name():
    pipe = pipeline()
    unet2d = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                   block_out_channels=(8, 16), norm_num_groups=4,
                                   down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",) * 2)
    with pytest.raises(TypeError, match="UNet2DConditionModel; DDIMPipeline has unet of type UNet2DModel"):
        accelerate(diffusers.DDIMPipeline(unet=unet2d, scheduler=diffusers.DDIMScheduler()))
    with pytest.raises(TypeError, match="has no attribute unet"):
        accelerate(object())
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        accelerate(pipe, dtype=torch.float64)
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        accelerate(pipe, dtype="float16")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        accelerate(pipe, backend="tensorrt")
    with pytest.raises(ValueError, match="compile=True asks for backend='compile'"):
        accelerate(pipe, compile=True, backend="openvino")
    with pytest.raises(TypeError, match="compile must be a bool"):
        accelerate(pipe, compile="yes")
    with pytest.raises(ValueError, match="backend must be 'compile' or 'openvino'"):
        accelerate_denoiser(tiny_diffrt_unet(), backend="torch")
    assert not hasattr(pipe, "_diffrt_report")  # nothing was changed by the refused calls
    assert not any(isinstance(p, DiffrtAttnProcessor) for p in pipe.unet.attn_processors.values())


def test_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'diffrt\[openvino\]'"):
        accelerate(pipeline(), backend="openvino")
    with pytest.raises(ImportError, match=r"pip install 'diffrt\[openvino\]'"):
        accelerate_denoiser(tiny_diffrt_unet(), backend="openvino")


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_refuses_other_dtypes():
    with pytest.raises(ValueError, match="backend='openvino' runs float32 UNets"):
        accelerate(pipeline(), backend="openvino", dtype=torch.bfloat16)


class CustomProcessor:
    """A user's processor: accelerate must keep it."""

    def __init__(self):
        self.inner = diffusers.models.attention_processor.AttnProcessor2_0()
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_unsupported_processors_are_left_and_reported():
    pipe = pipeline()
    want = run(pipe)
    name = next(iter(pipe.unet.attn_processors))
    path = name[: -len(".processor")]
    custom = CustomProcessor()
    pipe.unet.get_submodule(path).set_processor(custom)
    accelerate(pipe)
    report = pipe._diffrt_report
    assert list(report.attention_left) == [f"unet.{path}"]
    assert "CustomProcessor is not one of diffusers' standard processors" in report.attention_left[f"unet.{path}"]
    assert pipe.unet.attn_processors[name] is custom
    assert f"left unet.{path}" in str(report)
    assert_close_to_ref(run(pipe), want, dtype=torch.float32, scale=1.0)
    assert custom.calls > 0


def test_scheduler_registry_takes_a_new_fused_class_in_one_line(monkeypatch):
    heun = diffusers.HeunDiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1)
    pipe = pipeline(scheduler=heun)
    accelerate(pipe)
    assert pipe.scheduler is heun
    assert "no fused diffrt scheduler for HeunDiscreteScheduler" in pipe._diffrt_report.schedulers_left["scheduler"]
    undo(pipe)

    class FusedHeun(diffusers.HeunDiscreteScheduler):
        pass

    monkeypatch.setitem(acc.FUSED_SCHEDULERS, "HeunDiscreteScheduler", FusedHeun)
    accelerate(pipe)
    assert type(pipe.scheduler) is FusedHeun and pipe.scheduler.config == heun.config
    undo(pipe)
    assert pipe.scheduler is heun


class CountingGroupNorm(torch.nn.GroupNorm):
    calls = 0

    @classmethod
    def from_module(cls, norm):
        new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
        new.load_state_dict(norm.state_dict())
        return new

    def forward(self, x):
        CountingGroupNorm.calls += 1
        return super().forward(x)


def test_norms_and_geglu_run_on_diffrt_kernels_with_the_same_weights():
    from diffrt.integrations.diffusers_norms import DiffrtGroupNorm, DiffrtLayerNorm

    pipe = pipeline()
    before = {k: v for k, v in pipe.unet.state_dict().items()}
    kinds = {n: type(m) for n, m in pipe.unet.named_modules()}
    accelerate(pipe)
    after = dict(pipe.unet.named_modules())
    swapped = {n: type(after[n]).__name__ for n, kind in kinds.items()
               if kind in (torch.nn.GroupNorm, torch.nn.LayerNorm) or kind.__name__ == "GEGLU"}
    assert swapped and set(swapped.values()) == {"DiffrtGroupNorm", "DiffrtLayerNorm", "DiffrtGEGLU"}
    assert all(isinstance(after[n], kinds[n]) for n in swapped)  # subclasses: isinstance checks still hold
    state = pipe.unet.state_dict()
    assert state.keys() == before.keys() and all(state[k] is before[k] or torch.equal(state[k], before[k])
                                                  for k in state)
    assert {f"unet.{n}" for n in swapped} <= set(pipe._diffrt_report.modules_swapped)
    norm = next(m for m in after.values() if isinstance(m, DiffrtGroupNorm))
    x = torch.randn(2, norm.num_channels, 5, 3)
    assert_close_to_ref(norm(x), torch.nn.functional.group_norm(x.double(), norm.num_groups, norm.weight.double(),
                                                                norm.bias.double(), norm.eps),
                        dtype=torch.float32, scale=4.0)
    assert DiffrtLayerNorm.from_module(torch.nn.LayerNorm([4, 3])) is None  # several dims: left as it is
    undo(pipe)
    assert {n: type(m) for n, m in pipe.unet.named_modules()} == kinds


def test_module_swap_table_takes_names_imported_when_needed(monkeypatch):
    pipe = pipeline()
    monkeypatch.setitem(acc.MODULE_SWAPS, "torch.nn.modules.normalization.GroupNorm",
                        "tests.test_accelerate:CountingGroupNorm.from_module")
    accelerate(pipe)
    assert all(type(m) is not torch.nn.GroupNorm for m in pipe.unet.modules())
    undo(pipe)
    assert any(type(m) is torch.nn.GroupNorm for m in pipe.unet.modules())


def test_module_swap_table_replaces_and_restores_submodules(monkeypatch):
    pipe = pipeline()
    resnet = "diffusers.models.resnet.ResnetBlock2D"
    fused_resnet = acc.MODULE_SWAPS[resnet]
    # the reference: every swap but GroupNorm's and the ResnetBlock2D's (which fuses its GroupNorms with SiLU)
    monkeypatch.delitem(acc.MODULE_SWAPS, torch.nn.GroupNorm)
    monkeypatch.delitem(acc.MODULE_SWAPS, resnet)
    accelerate(pipe)
    want = run(pipe)
    undo(pipe)
    norms = {n: m for n, m in pipe.unet.named_modules() if type(m) is torch.nn.GroupNorm}
    monkeypatch.setitem(acc.MODULE_SWAPS, torch.nn.GroupNorm, CountingGroupNorm.from_module)
    # swapped resnet blocks run a norm they cannot fuse (CountingGroupNorm) step by step, as diffusers does
    monkeypatch.setitem(acc.MODULE_SWAPS, resnet, fused_resnet)
    accelerate(pipe)
    swapped = pipe._diffrt_report.modules_swapped
    assert {f"unet.{n}" for n in norms} <= set(swapped) and any(s.startswith("vae.") for s in swapped)
    assert all(type(pipe.unet.get_submodule(n)) is CountingGroupNorm for n in norms)
    CountingGroupNorm.calls = 0
    assert torch.equal(run(pipe), want)
    assert CountingGroupNorm.calls > 0
    undo(pipe)
    assert all(pipe.unet.get_submodule(n) is m for n, m in norms.items())


def test_a_failure_midway_leaves_the_pipeline_as_it_was(monkeypatch):
    class Broken:
        @classmethod
        def from_config(cls, config):
            raise RuntimeError("broken scheduler")

    pipe = pipeline()
    processors = dict(pipe.unet.attn_processors)
    scheduler = pipe.scheduler
    monkeypatch.setitem(acc.FUSED_SCHEDULERS, "DDIMScheduler", Broken)
    monkeypatch.setenv("DIFFRT_CPU_BF16", "1")  # the bfloat16 cast is undone (not float32 where bf16 is slow)
    with pytest.raises(RuntimeError, match="broken scheduler"):
        accelerate(pipe, dtype=torch.bfloat16)
    assert pipe.scheduler is scheduler and pipe.unet.dtype == torch.float32
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert not hasattr(pipe, "_diffrt_acceleration")


def test_compile_backend_wraps_the_unet_forward_and_undo_restores_it(monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    pipe = pipeline()
    accelerate(pipe, compile=True)
    assert calls == [{"dynamic": False}] and "forward" in pipe.unet.__dict__
    assert pipe._diffrt_report.backend == "compile"
    undo(pipe)
    assert "forward" not in pipe.unet.__dict__


@pytest.mark.slow
def test_compile_backend_matches_untouched():
    pipe = pipeline()
    want = run(pipe, steps=2)
    accelerate(pipe, compile=True)
    assert_close_to_ref(run(pipe, steps=2), want, dtype=torch.float32, scale=1.0)
    undo(pipe)
    assert torch.equal(run(pipe, steps=2), want)


def test_trace_of_a_diffrt_op_records_the_computation():
    """torch.jit.trace (OpenVINO's converter) cannot see a compiled kernel's writes: under a trace the ops
    run their torch reference, so the traced function computes on new inputs."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape checks: fixed per trace
        traced = torch.jit.trace(lambda q, k, v: ops.attention(q, k, v), (q, k, v))
    q2, k2, v2 = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    want = ops.attention_ref(q2.double(), k2.double(), v2.double())
    assert_close_to_ref(traced(q2, k2, v2), want, dtype=torch.float32, scale=1.0)


def test_torch_compile_captures_a_diffrt_op_in_one_graph():
    """torch.compile cannot trace a compiled kernel (a graph break and a warning at every call): under it
    the ops run their torch reference, so fullgraph=True captures them."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    compiled = torch.compile(lambda q, k, v: ops.attention(q, k, v), backend="eager", fullgraph=True)
    want = ops.attention_ref(q.double(), k.double(), v.double())
    assert_close_to_ref(compiled(q, k, v), want, dtype=torch.float32, scale=1.0)


def _openvino_backend_checks() -> None:
    """The OpenVINO backend's checks, run in a process of their own (`test_openvino_backend_…`)."""
    pipe = pipeline()
    want = run(pipe)
    accelerate(pipe, backend="openvino")
    assert pipe._diffrt_report.backend == "openvino" and "unet.*" in pipe._diffrt_report.attention_left
    got = run(pipe)
    assert_close_to_ref(got, want, dtype=torch.float32, scale=OV_SCALE)
    assert pipe.unet.forward.runner.conversions == 1  # one input signature: converted once
    assert len(list((Path(os.environ["DIFFRT_CACHE_DIR"]) / "openvino").iterdir())) == 1
    undo(pipe)
    assert torch.equal(run(pipe), want)
    again = pipeline()  # same weights: read from the disk cache, not converted
    accelerate(again, backend="openvino")
    assert_close_to_ref(run(again), want, dtype=torch.float32, scale=OV_SCALE)
    assert again.unet.forward.runner.conversions == 0
    # OpenVINO runs on torch's thread count, compiled anew (not converted) when it changes
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert_close_to_ref(run(again), want, dtype=torch.float32, scale=OV_SCALE)
        compiled = again.unet.forward.runner._compiled
        assert sorted(t for _, t in compiled) == [1, 2] and again.unet.forward.runner.conversions == 0
        assert [c.get_property("INFERENCE_NUM_THREADS") for (_, t), c in sorted(compiled.items(), key=lambda kv: kv[0][1])] == [1, 2]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_backend_matches_untouched_and_caches_on_disk(tmp_path):
    """In a fresh process: OpenVINO's runtime keeps a thread pool alive in the process that compiled a
    model, and a later fork (a DataLoader's workers, in other tests) must not inherit it."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DIFFRT_CACHE_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", "import tests.test_accelerate as t; t._openvino_backend_checks()"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


# diffrt's own pipelines: a DiffEdit pipeline on a tiny diffrt UNet, run by each backend.

def tiny_diffrt_unet():
    from diffrt.models.unet import UNet, UNetConfig

    torch.manual_seed(0)
    return UNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(8,), head_dim=16, context_dim=8)).eval()


def run_diffrt_diffedit(model):
    from diffrt.pipelines import DiffEditPipeline

    g = torch.Generator().manual_seed(1)
    prompts = {p: torch.randn(1, 3, 8, generator=g) for p in ("", "a cat", "a dog")}
    pipe = DiffEditPipeline(model, NoiseSchedule.make(), lambda ps: {"context": torch.cat([prompts[p] for p in ps])},
                            num_steps=4)
    image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        out = pipe(image, "a cat", "a dog", strength=0.75, guidance=3.0, n=2, output_type="pt", progress=False,
                   generator=torch.Generator().manual_seed(2))
    return out.images


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["compile", "openvino"])
def test_diffrt_pipeline_runs_an_accelerated_denoiser(backend, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    model = tiny_diffrt_unet()
    want = run_diffrt_diffedit(model)
    fast = accelerate_denoiser(model, backend=backend, cache_dir=tmp_path)
    assert (fast.prediction_type, fast.in_channels, fast.out_channels) == ("epsilon", 3, 3)
    got = run_diffrt_diffedit(fast)
    assert_close_to_ref(got, want, dtype=torch.float32, scale=want.abs().max().item() * OV_SCALE)


def test_accelerated_denoiser_shows_the_model_attributes_pipelines_read():
    """unCLIP and Imagen Editor read their denoisers' config (image size, conditioning side)."""
    model = tiny_diffrt_unet()
    fast = accelerate_denoiser(model, backend="compile")  # compiles at the first call only
    assert fast.config is model.config and fast.model is model
    assert [p for p in fast.parameters()] == [p for p in model.parameters()]
    with pytest.raises(AttributeError, match="no_such_attribute"):
        fast.no_such_attribute
