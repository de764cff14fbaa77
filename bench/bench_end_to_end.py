"""The whole denoising loop of a diffusers StableDiffusionPipeline, accelerated with one call, against
what its users already run: eager diffusers, ``torch.compile(unet)`` and the UNet converted with
OpenVINO (its default inference precision and f32), each driven by diffusers' own loop.

Prompt embeddings in, latents out (no text encoder, no VAE: the loop is what is compared), DDIM with
classifier-free guidance 7.5, batch 1, two UNet2DConditionModel sizes: the tiny test UNet and a
mid-size SD-like one (block_out_channels (128, 256, 512), layers_per_block 2, cross-attention dim
512, 32×32×4 latents; 48.0 GFLOP per batched [uncond; cond] call by torch's FlopCounterMode). Every
contestant's latents are compared with eager float32 diffusers' before timing (`error_budget`).
Compile and conversion time is paid before timing and reported apart (``compile_seconds`` in the JSON's extra_info).

    python -m pytest bench/bench_end_to_end.py --benchmark-only [-k mid] [--benchmark-json out.json]

DIFFRT_E2E_STEPS (default 20) sets the DDIM steps; a step's cost does not depend on its index, so
fewer steps give the same ratios sooner. The summary tables print each peer's time over diffrt's.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from .conftest import record

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # StableDiffusionPipeline's module imports it

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning",
                                        "ignore::torch.jit.TracerWarning")  # OpenVINO traces the UNet

STEPS = int(os.environ.get("DIFFRT_E2E_STEPS", "20"))
GUIDANCE = 7.5
SIZES = {
    "tiny": dict(sample_size=32, layers_per_block=1, block_out_channels=(32, 64), cross_attention_dim=32,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, attention_head_dim=8),
    "mid": dict(sample_size=32, layers_per_block=2, block_out_channels=(128, 256, 512), cross_attention_dim=512,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8),
}
TEXT_TOKENS = 77
ROUNDS = {"tiny": 3, "mid": 1}
PEERS = ("diffusers eager", "torch.compile(unet)", "OpenVINO default precision", "OpenVINO f32")
OURS = ("accelerate(pipe)", "accelerate(pipe, compile=True)", "accelerate(pipe, backend=\"openvino\")")


def pipeline(size: str, dtype: torch.dtype):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **SIZES[size]).eval().to(dtype)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(size: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    width = SIZES[size]["cross_attention_dim"]
    text = torch.randn(1, TEXT_TOKENS, width, generator=g).to(dtype)
    latents = torch.randn(1, 4, 32, 32, generator=g).to(dtype)
    return text, torch.zeros_like(text), latents


def loop(pipe, text, empty, latents):
    return pipe(prompt_embeds=text, negative_prompt_embeds=empty, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=latents.clone(), output_type="latent").images


def openvino_unet(pipe, text, latents, precision):
    """The standard OpenVINO route: convert the UNet once with static shapes (the loop's batched call),
    compile it for the CPU plugin and call it from the UNet's forward."""
    ov = pytest.importorskip("openvino")
    unet = pipe.unet

    class Plain(torch.nn.Module):  # tensors in, the noise prediction out: what a trace takes
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    example = (torch.cat([latents] * 2).float(), torch.tensor(999.0), torch.cat([text] * 2).float())
    with torch.no_grad():
        model = ov.convert_model(Plain(), example_input=example)
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}  # the thread count every contestant gets
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.compile_model(model, "CPU", config)
    output = compiled.output(0)

    def forward(sample, timestep, encoder_hidden_states, *args, return_dict=True, **kwargs):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(())
        result = compiled([sample.float().numpy(), t.numpy(), encoder_hidden_states.float().numpy()])[output]
        out = torch.from_numpy(result).to(sample.dtype)
        return diffusers.models.unets.unet_2d_condition.UNet2DConditionOutput(sample=out) if return_dict else (out,)

    unet.forward = forward
    return pipe


def contestant(name: str, size: str, dtype: torch.dtype, text, latents):
    """(the pipeline, ready to run; seconds spent compiling or converting)."""
    pipe = pipeline(size, dtype)
    start = time.perf_counter()
    if name == "torch.compile(unet)":
        pipe.unet = torch.compile(pipe.unet)
    elif name.startswith("OpenVINO"):
        openvino_unet(pipe, text, latents, None if "default" in name else "f32")
    elif name.startswith("accelerate"):
        from diffrt.integrations.diffusers import accelerate

        accelerate(pipe, compile="compile=True" in name, backend="openvino" if "openvino" in name else None)
    return pipe, time.perf_counter() - start


FLOAT32_TOLERANCE = 2e-3  # max |latent error| against eager float32 after STEPS steps


def error_budget(size: str, dtype: torch.dtype, name: str, text, empty, latents, reference32) -> float:
    """How far a contestant's latents may lie from eager float32's: float32 rounding for a float32
    contestant; for bfloat16 arithmetic (a bfloat16 pipeline, OpenVINO's default precision on CPUs with
    bf16) twice the distance of diffusers' own eager bfloat16 loop — after a few guided steps of an
    untrained UNet, bf16 rounding alone moves the latents by O(1)."""
    if dtype == torch.float32 and "default precision" not in name:
        return FLOAT32_TOLERANCE
    eager16 = loop(pipeline(size, torch.bfloat16), *(x.to(torch.bfloat16) for x in (text, empty, latents)))
    return max(2 * (eager16.float() - reference32).abs().max().item(), FLOAT32_TOLERANCE)


@pytest.mark.parametrize("name", PEERS + OURS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("size", list(SIZES))
def bench_denoising_loop(benchmark, threads, size, dtype, name):
    text, empty, latents = inputs(size, dtype)
    if "openvino" in name.lower() and dtype != torch.float32:
        pytest.skip("OpenVINO converts the float32 UNet; its default precision is the bf16 row")
    pipe, setup = contestant(name, size, dtype, text, latents)
    first = time.perf_counter()
    out = loop(pipe, text, empty, latents)  # compiles on the first call (torch.compile), warms caches
    warmup = time.perf_counter() - first
    text32, empty32, latents32 = inputs(size, torch.float32)
    reference = loop(pipeline(size, torch.float32), text32, empty32, latents32).float()
    error = (out.float() - reference).abs().max().item()
    tolerance = error_budget(size, dtype, name, text32, empty32, latents32, reference)
    assert error <= tolerance, f"{name}: latents differ from eager float32 diffusers' by {error} > {tolerance}"
    benchmark.extra_info.update(compile_seconds=setup + (warmup if "compile" in name else 0.0), max_error=error,
                                steps=STEPS)
    benchmark.pedantic(loop, args=(pipe, text, empty, latents), rounds=ROUNDS[size], iterations=1)
    case = f"{size} {str(dtype).replace('torch.', '')} {threads}thr"
    for ours in OURS:  # one table per diffrt configuration, every peer in both
        table = f"{STEPS} DDIM steps + CFG through diffusers' loop: {ours} against its peers"
        record(benchmark, table, case, "diffrt" if name == ours else name) if name not in OURS or name == ours \
            else None
