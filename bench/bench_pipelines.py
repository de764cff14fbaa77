"""End to end on identical tiny diffusers components (UNet2DConditionModel + AutoencoderKL + DDIM):
diffusers' StableDiffusionPipeline vs diffrt (ddim_sample on the same UNet through
DiffusersUNetDenoiser, diffrt's fused attention processor, the fused guided DDIM step, the same VAE).
Text-to-image, 50 DDIM steps with classifier-free guidance, float32 and bfloat16; the outputs are
compared before timing.

    python -m pytest bench/bench_pipelines.py --benchmark-only
"""

import pytest
import torch

from .conftest import record

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # StableDiffusionPipeline's module imports it

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")

STEPS, W = 50, 7.5


def components(dtype):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval().to(dtype)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1).eval().to(dtype)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        steps_offset=1)
    return unet, vae, scheduler


def diffusers_text_to_image(dtype):
    unet, vae, scheduler = components(dtype)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run(text, empty, latents):
        return pipe(prompt_embeds=text, negative_prompt_embeds=empty, num_inference_steps=STEPS, guidance_scale=W,
                    latents=latents.clone(), output_type="pt").images

    return run


def diffrt_text_to_image(dtype):
    from diffrt import ddim_sample
    from diffrt.integrations.diffusers import (
        DiffrtAttnProcessor,
        DiffusersLatentCodec,
        DiffusersUNetDenoiser,
        schedules_from_diffusers,
    )

    unet, vae, scheduler = components(dtype)
    unet.set_attn_processor(DiffrtAttnProcessor())
    model, codec = DiffusersUNetDenoiser(unet, scheduler=scheduler), DiffusersLatentCodec(vae)
    schedule = schedules_from_diffusers(scheduler, STEPS)

    def run(text, empty, latents):
        x = ddim_sample(model, latents.clone(), schedule, cond=text, uncond=empty, guidance=W, progress=False)
        return (codec.decode(x).float() / 2 + 0.5).clamp(0, 1)

    return run


@pytest.mark.parametrize("impl", ["diffrt", "diffusers StableDiffusionPipeline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def bench_text_to_image(benchmark, threads, dtype, impl):
    g = torch.Generator().manual_seed(0)
    text, empty = torch.randn(1, 8, 32, generator=g).to(dtype), torch.zeros(1, 8, 32, dtype=dtype)
    latents = torch.randn(1, 4, 32, 32, generator=g).to(dtype)
    run = (diffrt_text_to_image if impl == "diffrt" else diffusers_text_to_image)(dtype)
    out = run(text, empty, latents)
    reference = diffusers_text_to_image(dtype)(text, empty, latents).float()
    tolerance = 1e-4 if dtype == torch.float32 else 0.1  # bf16: 50 steps of bf16 rounding in both
    assert (out.float() - reference).abs().max() <= tolerance
    benchmark.pedantic(run, args=(text, empty, latents), rounds=3, iterations=1)
    record(benchmark, "text-to-image, 50 DDIM steps + CFG, tiny SD components (64 px)",
           f"{str(dtype).replace('torch.', '')} {threads}thr", impl)


class _LatentCodec:
    """Inputs are already latents; outputs are decoded with the VAE (as diffusers' pipeline does)."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, latents, **_):
        return latents

    def decode(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample


def diffedit_runs(dtype, strength=0.5, n=10):
    """(diffrt, diffusers) DiffEdit — mask (n draws, CFG) + DDIM inversion to `strength` + masked
    decoding with CFG — on the same components; they differ on purpose in one place (diffrt blends
    at the same timestep, diffusers one step late), so only the time is compared."""
    from diffusers.pipelines.deprecated.stable_diffusion_diffedit.pipeline_stable_diffusion_diffedit import (
        StableDiffusionDiffEditPipeline,
    )

    from diffrt import NoiseSchedule
    from diffrt.integrations.diffusers import DiffrtAttnProcessor, DiffusersUNetDenoiser
    from diffrt.pipelines import DiffEditPipeline

    unet, vae, scheduler = components(dtype)
    theirs = StableDiffusionDiffEditPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    unet2, vae2, scheduler2 = components(dtype)
    unet2.set_attn_processor(DiffrtAttnProcessor())
    g = torch.Generator().manual_seed(0)
    embeds = {"": torch.zeros(1, 8, 32, dtype=dtype), "src": torch.randn(1, 8, 32, generator=g).to(dtype),
              "tgt": torch.randn(1, 8, 32, generator=g).to(dtype)}
    ours = DiffEditPipeline(DiffusersUNetDenoiser(unet2, scheduler=scheduler2), NoiseSchedule(scheduler2.alphas_cumprod.double()),
                            lambda prompts: torch.cat([embeds[p] for p in prompts]), codec=_LatentCodec(vae2),
                            num_steps=STEPS, spacing="leading")
    latents = torch.randn(1, 4, 32, 32, generator=g).to(dtype)

    def run_diffusers():
        mask = theirs.generate_mask(image=latents, source_prompt_embeds=embeds["src"], target_prompt_embeds=embeds["tgt"],
                                    source_negative_prompt_embeds=embeds[""], target_negative_prompt_embeds=embeds[""],
                                    num_maps_per_mask=n, mask_encode_strength=strength, num_inference_steps=STEPS,
                                    guidance_scale=W, generator=torch.Generator().manual_seed(1), output_type="np")
        inverted = theirs.invert(image=latents, prompt_embeds=embeds["src"], negative_prompt_embeds=embeds[""],
                                 inpaint_strength=strength, num_inference_steps=STEPS, guidance_scale=1.0,
                                 output_type="latent").latents
        return theirs(mask_image=mask, image_latents=inverted, prompt_embeds=embeds["tgt"],
                      negative_prompt_embeds=embeds[""], inpaint_strength=strength, num_inference_steps=STEPS,
                      guidance_scale=W, output_type="pt").images

    def run_diffrt():
        return ours(latents, "src", "tgt", n=n, strength=strength, guidance=W, mask_guidance=W,
                    generator=torch.Generator().manual_seed(1), output_type="pt", progress=False).images

    return run_diffrt, run_diffusers


@pytest.mark.parametrize("impl", ["diffrt", "diffusers StableDiffusionDiffEditPipeline"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def bench_diffedit(benchmark, threads, dtype, impl):
    run_diffrt, run_diffusers = diffedit_runs(dtype)
    run = run_diffrt if impl == "diffrt" else run_diffusers
    assert run().shape[-2:] == (64, 64)
    benchmark.pedantic(run, rounds=3, iterations=1)
    record(benchmark, "DiffEdit (mask n=10 + inversion + decoding, 50-step schedule at r=0.5), tiny SD components",
           f"{str(dtype).replace('torch.', '')} {threads}thr", impl)
