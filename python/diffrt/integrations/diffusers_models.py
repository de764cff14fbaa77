"""diffusers components as diffrt building blocks: a UNet2DConditionModel as a Denoiser, its
DDIMScheduler config as diffrt schedules, and an AutoencoderKL as a latent codec. diffusers is an
optional dependency, imported only by the caller that passes its objects in."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..schedules import NoiseSchedule, SamplingSchedule


class DiffusersUNetDenoiser(torch.nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind the :class:`diffrt.Denoiser` protocol (an
    ``nn.Module`` holding the UNet, so pipelines that fine-tune, such as Imagic, can train it).

    ``cond`` is the text-encoder output (B, L, D), or a dict with ``encoder_hidden_states`` and
    optionally ``encoder_attention_mask`` (B, L; 1 = attend) and ``added_cond_kwargs``.
    """

    def __init__(self, unet: Any, *, prediction_type: Optional[str] = None, scheduler: Any = None):
        super().__init__()
        self.unet = unet
        if prediction_type is None:
            prediction_type = scheduler.config.prediction_type if scheduler is not None else "epsilon"
        self.prediction_type = prediction_type
        self.in_channels = unet.config.in_channels
        self.out_channels = unet.config.out_channels

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        kwargs = {}
        if isinstance(cond, dict):
            hidden = cond["encoder_hidden_states"]
            if cond.get("encoder_attention_mask") is not None:
                kwargs["encoder_attention_mask"] = cond["encoder_attention_mask"]
            if cond.get("added_cond_kwargs") is not None:
                kwargs["added_cond_kwargs"] = cond["added_cond_kwargs"]
        else:
            hidden = cond
        dtype = next(self.unet.parameters()).dtype
        return self.unet(x_t.to(dtype), t, encoder_hidden_states=hidden.to(dtype), **kwargs).sample


def schedules_from_diffusers(scheduler: Any, num_steps: int) -> SamplingSchedule:
    """diffrt's sampling schedule for a diffusers DDIM-family scheduler's config: the same ᾱ table
    (taken from the scheduler, so both run on identical numbers), spacing, steps_offset and
    set_alpha_to_one. For ``linspace`` diffrt steps within its own sequence (diffusers does not)."""
    cfg = scheduler.config
    noise = NoiseSchedule(scheduler.alphas_cumprod.double().cpu())
    return SamplingSchedule.ddim(
        noise, num_steps, spacing=cfg.get("timestep_spacing", "leading"), steps_offset=cfg.get("steps_offset", 0),
        set_alpha_to_one=cfg.get("set_alpha_to_one", True),
    )


class DiffusersLatentCodec:
    """An ``AutoencoderKL`` as a latent codec: images in [−1, 1] ⇄ scaled latents."""

    def __init__(self, vae: Any):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, generator: Optional[torch.Generator] = None,
               sample: bool = False) -> torch.Tensor:
        """z = scaling_factor · (posterior mean, or a posterior sample with ``sample=True``)."""
        dist = self.vae.encode(images.to(next(self.vae.parameters()).dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor).sample
