"""DiffEdit's mask equals diffusers' StableDiffusionDiffEditPipeline.generate_mask on the same tiny
UNet, latents, prompt embeddings and noise draws (with and without classifier-free guidance)."""

import pytest
import torch

from diffrt import NoiseSchedule
from diffrt.integrations.diffusers import DiffusersUNetDenoiser
from diffrt.pipelines import DiffEditPipeline

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # diffusers' DiffEdit pipeline module imports it

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def components():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        steps_offset=1)
    return unet, vae, scheduler


def _diffusers_diffedit(unet, vae, scheduler):
    from diffusers.pipelines.deprecated.stable_diffusion_diffedit.pipeline_stable_diffusion_diffedit import (
        StableDiffusionDiffEditPipeline,
    )

    pipe = StableDiffusionDiffEditPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
        inverse_scheduler=diffusers.DDIMInverseScheduler.from_config(scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prompt_embeds(g):
    return {"": torch.zeros(1, 5, 32), "a cat": torch.randn(1, 5, 32, generator=g),
            "a dog": torch.randn(1, 5, 32, generator=g)}


@pytest.mark.parametrize("guidance", [7.5, 3.0])  # diffusers' prompt_embeds path needs CFG on
def test_generate_mask_matches_diffusers(guidance):
    unet, vae, scheduler = components()
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    embeds = _prompt_embeds(g)
    theirs = _diffusers_diffedit(unet, vae, scheduler)
    negatives = {"source_negative_prompt_embeds": embeds[""], "target_negative_prompt_embeds": embeds[""]}
    theirs = theirs.generate_mask(
        image=latents, source_prompt_embeds=embeds["a cat"], target_prompt_embeds=embeds["a dog"], num_maps_per_mask=6,
        mask_encode_strength=0.5, mask_thresholding_ratio=3.0, num_inference_steps=20,
        guidance_scale=guidance, generator=torch.Generator().manual_seed(11), output_type="np", **negatives,
    )
    ours_pipe = DiffEditPipeline(DiffusersUNetDenoiser(unet, scheduler=scheduler),
                                 NoiseSchedule(scheduler.alphas_cumprod.double()),
                                 lambda prompts: torch.cat([embeds[p] for p in prompts]), num_steps=20, spacing="leading")
    kw = dict(n=6, strength=0.5, clamp_ratio=3.0, guidance=guidance)
    ours = ours_pipe.generate_mask(latents, "a cat", "a dog", generator=torch.Generator().manual_seed(11), **kw)
    soft = ours_pipe.generate_mask(latents, "a cat", "a dog", threshold=None, generator=torch.Generator().manual_seed(11),
                                   **kw)
    theirs = torch.from_numpy(theirs).float()[:, None]
    assert 0 < theirs.sum() < theirs.numel()  # a real mask, not all or nothing
    decided = (soft - 0.5).abs() > 1e-4  # float rounding may flip a pixel sitting on the threshold
    assert torch.equal(ours[decided], theirs[decided])
    assert decided.float().mean() > 0.98



def _pipelines(guidance_scale=1.0):
    from diffrt.integrations.diffusers import DiffusersLatentCodec

    unet, vae, scheduler = components()
    g = torch.Generator().manual_seed(3)
    embeds = _prompt_embeds(g)
    theirs = _diffusers_diffedit(unet, vae, scheduler)
    # the scheduler's config (leading, steps_offset=1, set_alpha_to_one=False) and diffusers' int(s·N) steps;
    # latents drawn from the VAE posterior with the call's generator
    ours = DiffEditPipeline(DiffusersUNetDenoiser(unet, scheduler=scheduler),
                            NoiseSchedule(scheduler.alphas_cumprod.double()),
                            lambda prompts: torch.cat([embeds[p] for p in prompts]), codec=DiffusersLatentCodec(vae),
                            num_steps=10, spacing="leading", steps_offset=1, set_alpha_to_one=False,
                            strength_rounding="floor", posterior="sample")
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    return theirs, ours, embeds, image


def test_generate_mask_from_pixels_matches_diffusers():
    """Strength 0.55 of 10 steps (diffusers keeps int(5.5) = 5) and a VAE posterior draw per noise draw."""
    theirs, ours, embeds, image = _pipelines()
    kw = dict(n=6, strength=0.55, clamp_ratio=3.0, guidance=7.5)
    want = theirs.generate_mask(
        image=image, source_prompt_embeds=embeds["a cat"], target_prompt_embeds=embeds["a dog"],
        source_negative_prompt_embeds=embeds[""], target_negative_prompt_embeds=embeds[""], num_maps_per_mask=6,
        mask_encode_strength=0.55, mask_thresholding_ratio=3.0, num_inference_steps=10, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(11), output_type="np",
    )
    want = torch.from_numpy(want).float()[:, None]
    got = ours.generate_mask(image, "a cat", "a dog", generator=torch.Generator().manual_seed(11), **kw)
    soft = ours.generate_mask(image, "a cat", "a dog", threshold=None, generator=torch.Generator().manual_seed(11), **kw)
    assert 0 < want.sum() < want.numel()
    decided = (soft - 0.5).abs() > 1e-4
    assert torch.equal(got[decided], want[decided]) and decided.float().mean() > 0.98


def test_invert_matches_diffusers_with_an_empty_source_prompt():
    theirs, ours, embeds, image = _pipelines()
    want = theirs.invert(image=image, prompt_embeds=embeds[""], num_inference_steps=10, inpaint_strength=0.55,
                         guidance_scale=1.0, generator=torch.Generator().manual_seed(5)).latents
    # diffusers: (1, k, …), noisiest first; diffrt: [x_0, …, x_r]
    got = ours.invert(image, "", strength=0.55, generator=torch.Generator().manual_seed(5), progress=False)
    assert want.shape[1] == len(got) - 1 == 5
    torch.testing.assert_close(torch.stack(got[:0:-1], 1), want, rtol=1e-4, atol=1e-4)


def test_a_call_runs_the_vae_encoder_once_with_posterior_sampling():
    """Mask estimation (n posterior draws), inversion and decoding share one encoder pass; the mask
    is the one generate_mask gives after the inversion's draw."""
    _, ours, _, image = _pipelines()
    vae = ours.codec.vae
    passes = []
    encode = vae.encode
    vae.encode = lambda x, *a, **k: passes.append(x.shape[0]) or encode(x, *a, **k)
    out = ours(image, "a cat", "a dog", n=6, strength=0.55, guidance=7.5, mask_guidance=7.5, output_type="pt",
               generator=torch.Generator().manual_seed(11), progress=False)
    assert passes == [1]
    g = torch.Generator().manual_seed(11)
    x0 = ours.codec.encode(image, sample=True, generator=g)
    torch.testing.assert_close(out.latents[0], x0, rtol=0, atol=0)
    mask = ours.generate_mask(image, "a cat", "a dog", n=6, strength=0.55, guidance=7.5, generator=g)
    assert torch.equal(out.mask, mask) and 0 < mask.sum() < mask.numel()
