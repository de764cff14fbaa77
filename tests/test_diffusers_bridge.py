"""ddim_sample on a tiny diffusers UNet equals diffusers' own DDIM loop (same scheduler config,
same initial noise, guidance on), and an AutoencoderKL works as a latent codec."""

import pytest
import torch

from diffrt import ddim_sample
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
