"""ddim_sample on a tiny diffusers UNet equals diffusers' own DDIM loop (same scheduler config,
same initial noise, guidance on), and an AutoencoderKL works as a latent codec."""

import pytest
import torch

from diffrt import ddim_invert, ddim_sample
from diffrt.integrations.diffusers import DiffusersLatentCodec, DiffusersUNetDenoiser, schedules_from_diffusers

diffusers = pytest.importorskip("diffusers")


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_ddim_sample_on_diffusers_unet_matches_diffusers_loop(spacing, offset, eta):
    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing=spacing, steps_offset=offset,
                                        clip_sample=False, set_alpha_to_one=False)
    steps, w = 8, 5.0
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 4, 8, 8, generator=g)
    text, empty = torch.randn(2, 5, 32, generator=g), torch.zeros(2, 5, 32)

    scheduler.set_timesteps(steps)
    x, noise_gen = x_T.clone(), torch.Generator().manual_seed(9)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([empty, text])).sample
            u, c = out.chunk(2)
            x = scheduler.step(u + w * (c - u), t, x, eta=eta, generator=noise_gen).prev_sample

    model = DiffusersUNetDenoiser(unet, scheduler=scheduler)
    schedule = schedules_from_diffusers(scheduler, steps)
    ours = ddim_sample(model, x_T, schedule, cond=text, uncond=empty, guidance=w, eta=eta,
                       generator=torch.Generator().manual_seed(9), progress=False)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_autoencoder_as_latent_codec():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, layers_per_block=1,
    ).eval()
    codec = DiffusersLatentCodec(vae)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(images)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(z, expected)
    assert codec.decode(z).shape == (2, 3, 16, 16)


def diffusers_loop(unet, scheduler, x, steps, w, text, empty, *, eta=0.0, seed=9, **unet_kwargs):
    """diffusers' own DDIM loop with classifier-free guidance on the batched [empty; text] input."""
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([empty, text]), **unet_kwargs).sample
            u, c = out.chunk(2)
            x = scheduler.step(u + w * (c - u), t, x, eta=eta, generator=gen).prev_sample
    return x


SCHEDULER_CONFIGS = {
    "clip_sample": (dict(clip_sample=True), 0.0, "next_in_sequence"),
    "clip_sample_range_eta": (dict(clip_sample=True, clip_sample_range=1.5), 0.8, "next_in_sequence"),
    "thresholding": (dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5, clip_sample=False),
                     0.0, "next_in_sequence"),
    "thresholding_max_1": (dict(thresholding=True, clip_sample=False), 0.0, "next_in_sequence"),
    "v_prediction_clipped": (dict(prediction_type="v_prediction", clip_sample=True, clip_sample_range=2.0), 0.0,
                             "next_in_sequence"),
    "linspace_diffusers_steps": (dict(timestep_spacing="linspace", clip_sample=False, steps_offset=0), 0.0, "diffusers"),
    "trailing_7_diffusers_steps": (dict(timestep_spacing="trailing", clip_sample=True, steps_offset=0), 0.0, "diffusers"),
}


@pytest.mark.parametrize("name", list(SCHEDULER_CONFIGS))
def test_schedules_from_diffusers_is_the_scheduler(name):
    """The one-call recipe (DiffusersUNetDenoiser(unet, scheduler=), schedules_from_diffusers, ddim_sample)
    runs what the scheduler's own loop runs, whatever its config says about x̂0 and prediction type."""
    config, eta, step_to = SCHEDULER_CONFIGS[name]
    steps = 7 if name.startswith("trailing_7") else 8
    unet = tiny_unet()
    base = dict(beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    scheduler = diffusers.DDIMScheduler(**{**base, **config})
    g = torch.Generator().manual_seed(2)
    x_T = 2 * torch.randn(2, 4, 8, 8, generator=g)
    text, empty = torch.randn(2, 5, 32, generator=g), torch.zeros(2, 5, 32)
    want = diffusers_loop(unet, scheduler, x_T.clone(), steps, 5.0, text, empty, eta=eta)
    schedule = schedules_from_diffusers(scheduler, steps, step_to=step_to)
    ours = ddim_sample(DiffusersUNetDenoiser(unet, scheduler=scheduler), x_T, schedule, cond=text, uncond=empty,
                       guidance=5.0, eta=eta, generator=torch.Generator().manual_seed(9), progress=False)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
    if step_to == "diffusers":  # diffrt's own rule steps elsewhere for this spacing
        assert schedules_from_diffusers(scheduler, steps).alphas_prev != schedule.alphas_prev


def test_schedules_from_diffusers_inverse_scheduler():
    unet = tiny_unet()
    inverse = diffusers.DDIMInverseScheduler(beta_schedule="scaled_linear", clip_sample=True, clip_sample_range=0.7,
                                             set_alpha_to_one=False, steps_offset=1)
    steps, w = 8, 3.0
    g = torch.Generator().manual_seed(3)
    x0 = 1.5 * torch.randn(1, 4, 8, 8, generator=g)
    text, empty = torch.randn(1, 5, 32, generator=g), torch.zeros(1, 5, 32)
    inverse.set_timesteps(steps)
    x = x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([empty, text])).sample.chunk(2)
            x = inverse.step(u + w * (c - u), t, x).prev_sample
    schedule = schedules_from_diffusers(inverse, steps)
    assert schedule.clip_sample_range == 0.7 and schedule.dynamic_threshold is None
    ours = ddim_invert(DiffusersUNetDenoiser(unet, scheduler=inverse), x0, schedule, cond=text, uncond=empty, guidance=w,
                       progress=False)
    torch.testing.assert_close(ours[-1], x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler"])
def test_schedules_from_diffusers_refuses_other_update_rules(kind):
    scheduler = getattr(diffusers, kind)()
    with pytest.raises(ValueError, match=f"{kind} updates the sample differently.*DDIMScheduler.from_config"):
        schedules_from_diffusers(scheduler, 10)
    with pytest.raises(ValueError, match="step_to"):
        schedules_from_diffusers(diffusers.DDIMScheduler(), 10, step_to="nearest")


def test_unet_denoiser_prediction_type_is_required_or_from_the_scheduler():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="needs prediction_type= .* or scheduler="):
        DiffusersUNetDenoiser(unet)
    v = diffusers.DDIMScheduler(prediction_type="v_prediction")
    assert DiffusersUNetDenoiser(unet, scheduler=v).prediction_type == "v_prediction"
    assert DiffusersUNetDenoiser(unet, prediction_type="sample").prediction_type == "sample"
    with pytest.raises(ValueError, match="contradicts the scheduler"):
        DiffusersUNetDenoiser(unet, scheduler=v, prediction_type="epsilon")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DiffusersUNetDenoiser(unet, prediction_type="eps")
    # the schedule knows what its scheduler expects: a model predicting something else is refused
    schedule = schedules_from_diffusers(v, 4)
    with pytest.raises(ValueError, match="predicts 'epsilon' but the schedule is configured for prediction_type='v_pred"):
        ddim_sample(DiffusersUNetDenoiser(unet, prediction_type="epsilon"), torch.randn(1, 4, 8, 8), schedule,
                    cond=torch.randn(1, 5, 32), progress=False)


class GainShiftProcessor:
    """AttnProcessor2_0 with two cross_attention_kwargs: out·gain + shift (gain per sample, (B, 1, 1))."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0,
                 shift=0.0):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * gain + shift


def test_unet_conditioning_arguments_pass_through_under_guidance():
    """timestep_cond, added_cond_kwargs, cross_attention_kwargs and ControlNet-style residuals reach the
    UNet, batched [uncond; cond] under guidance like the text itself."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8, time_cond_proj_dim=6,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
    ).eval()
    unet.set_attn_processor(GainShiftProcessor())
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    g = torch.Generator().manual_seed(4)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x_T, steps, w = r(2, 4, 8, 8), 5, 4.0

    def condition(text):
        return {"encoder_hidden_states": text, "timestep_cond": r(2, 6),
                "added_cond_kwargs": {"text_embeds": r(2, 8), "time_ids": r(2, 6)},
                "cross_attention_kwargs": {"gain": 1 + 0.5 * r(2, 1, 1)},
                "down_block_additional_residuals": (r(2, 32, 8, 8), r(2, 32, 8, 8), r(2, 32, 4, 4), r(2, 64, 4, 4)),
                "mid_block_additional_residual": r(2, 64, 4, 4)}

    cond, uncond = condition(r(2, 5, 32)), condition(torch.zeros(2, 5, 32))
    both = diffrt_batch(uncond, cond)
    want = diffusers_loop(unet, scheduler, x_T.clone(), steps, w, cond["encoder_hidden_states"],
                          uncond["encoder_hidden_states"], timestep_cond=both["timestep_cond"],
                          added_cond_kwargs=both["added_cond_kwargs"],
                          cross_attention_kwargs={**both["cross_attention_kwargs"], "shift": 0.05},
                          down_block_additional_residuals=both["down_block_additional_residuals"],
                          mid_block_additional_residual=both["mid_block_additional_residual"])
    model = DiffusersUNetDenoiser(unet, scheduler=scheduler, cross_attention_kwargs={"shift": 0.05})
    schedule = schedules_from_diffusers(scheduler, steps)
    ours = ddim_sample(model, x_T, schedule, cond=cond, uncond=uncond, guidance=w, progress=False)
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-4)
    plain = {"encoder_hidden_states": cond["encoder_hidden_states"], "added_cond_kwargs": cond["added_cond_kwargs"]}
    assert (ddim_sample(model, x_T, schedule, cond=plain, progress=False) - ours).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"keys \['text_embeds'\] that DiffusersUNetDenoiser does not take"):
        model(x_T, torch.full((2,), 10), {**plain, "text_embeds": r(2, 8)})
    with pytest.raises(ValueError, match=r"\['shift'\] are given both in cond and to DiffusersUNetDenoiser"):
        model(x_T, torch.full((2,), 10), {**plain, "cross_attention_kwargs": {"shift": 0.1}})


def diffrt_batch(uncond, cond):
    from diffrt.sampling import cat_conditions

    return cat_conditions(uncond, cond)


def test_controlnet_runs_every_step_on_the_batched_input():
    unet = tiny_unet()
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # ControlNet's output convolutions start at zero; make its residuals count
        for p in controlnet.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                        steps_offset=1)
    steps, w, scale = 6, 5.0, 0.7
    x_T, image = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    text, empty = torch.randn(2, 5, 32, generator=g), torch.zeros(2, 5, 32)

    scheduler.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():  # StableDiffusionControlNetPipeline's loop (guess_mode off)
        for t in scheduler.timesteps:
            both, hidden = torch.cat([x, x]), torch.cat([empty, text])
            down, mid = controlnet(both, t, encoder_hidden_states=hidden, controlnet_cond=torch.cat([image, image]),
                                   conditioning_scale=scale, return_dict=False)
            u, c = unet(both, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample.chunk(2)
            x = scheduler.step(u + w * (c - u), t, x).prev_sample

    model = DiffusersUNetDenoiser(unet, scheduler=scheduler, controlnet=controlnet)
    cond = {"encoder_hidden_states": text, "controlnet_cond": image, "controlnet_conditioning_scale": scale}
    uncond = {**cond, "encoder_hidden_states": empty}
    schedule = schedules_from_diffusers(scheduler, steps)
    ours = ddim_sample(model, x_T, schedule, cond=cond, uncond=uncond, guidance=w, progress=False)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    without = ddim_sample(DiffusersUNetDenoiser(unet, scheduler=scheduler), x_T, schedule, cond=text, uncond=empty,
                          guidance=w, progress=False)
    assert (without - ours).abs().max() > 1e-2
    with pytest.raises(ValueError, match="controlnet_cond"):
        model(x_T, torch.full((2,), 10), {"encoder_hidden_states": text})


def tiny_vae(**config):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, layers_per_block=1, **config,
    ).eval()


def test_latent_codec_applies_the_vae_configs_normalisation():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    # SD3 / Flux: latents = (x − shift_factor)·scaling_factor
    vae = tiny_vae(scaling_factor=0.7, shift_factor=0.3)
    codec = DiffusersLatentCodec(vae)
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
        torch.testing.assert_close(codec.encode(images), (dist.mean - 0.3) * 0.7)
        torch.testing.assert_close(codec.encode(images, sample=True, generator=torch.Generator().manual_seed(1)),
                                   (dist.sample(torch.Generator().manual_seed(1)) - 0.3) * 0.7)
        torch.testing.assert_close(codec.decode(z), vae.decode(z / 0.7 + 0.3).sample)
    # SDXL-style per-channel statistics: latents = (x − mean)·scaling_factor/std
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    vae = tiny_vae(scaling_factor=0.5, latents_mean=mean, latents_std=std)
    codec = DiffusersLatentCodec(vae)
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(codec.encode(images), (vae.encode(images).latent_dist.mean - m) * 0.5 / s)
        torch.testing.assert_close(codec.decode(z), vae.decode(z * s / 0.5 + m).sample)
    with pytest.raises(ValueError, match="latents_mean and latents_std"):
        DiffusersLatentCodec(tiny_vae(latents_mean=mean))


@pytest.mark.parametrize("config", [dict(scaling_factor=0.7, shift_factor=0.3),
                                    dict(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0],
                                         latents_std=[1.5, 0.5, 2.0, 1.0])], ids=["shift", "per-channel"])
def test_latent_posterior_draws_what_latent_dist_sample_draws_from_one_encoder_pass(config):
    """copies=1 is latent_dist.sample(generator) exactly; copies=n is the sample of the image batch
    repeated n times (image-major), as diffusers' DiffEdit encodes it for its mask, from one pass."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    vae = tiny_vae(**config)
    codec = DiffusersLatentCodec(vae)
    passes = []
    encode = vae.encode
    vae.encode = lambda x, *a, **k: passes.append(x.shape[0]) or encode(x, *a, **k)
    with torch.no_grad():
        posterior = codec.posterior(images)
        once = posterior.sample(torch.Generator().manual_seed(2))
        thrice = posterior.sample(torch.Generator().manual_seed(2), copies=3)
        assert passes == [2]
        want_once = codec._normalise(encode(images).latent_dist.sample(torch.Generator().manual_seed(2)))
        want_thrice = codec._normalise(encode(images.repeat_interleave(3, 0)).latent_dist.sample(
            torch.Generator().manual_seed(2)))
    assert torch.equal(once, want_once)
    torch.testing.assert_close(thrice, want_thrice, rtol=1e-5, atol=1e-5)  # a batch of 6 may round differently
    assert not torch.equal(thrice[0], thrice[1])
    assert torch.equal(posterior.mean, codec.encode(images))
    with pytest.raises(ValueError, match="copies must be an integer >= 1"):
        posterior.sample(copies=0)
