"""unCLIP / DALL-E 2 (Ramesh et al. 2022): text → prior → CLIP image embedding → decoder → SR.

- generation: the prior samples two image embeddings per caption and keeps the one with the
  higher cosine similarity to the caption's text embedding (§2.1); the decoder, conditioned on
  the embedding (GLIDE-style: time embedding + 4 context tokens), samples the image; an optional
  super-resolution UNet upsamples it.
- variations (§3.1): DDIM-invert the decoder on the input image to get x_T, then decode with η > 0.
- interpolation (§3.2): slerp between two image embeddings, decoded from the same x_T.
- text diffs (§3.3): z_d = normalise(z_t − z_t0); z_θ = slerp(z_i, z_d, θ).

Every guidance argument (``guidance``, ``prior_guidance``, ``sr_guidance``) is a number, a 1-D
tensor with one weight per output (image or image embedding), or a schedule (step, num_steps) -> w,
as in :func:`diffrt.ddim_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..denoiser import check_denoiser
from ..sampling import Guidance, ddim_invert, ddim_sample
from ..schedules import NoiseSchedule, SamplingSchedule
from ._common import (check_guidance, check_image, convert_output, float32_on_slow_bf16_cpu, map_weights,
                      model_placement, prompt_list, randn)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of the directions of a and b (rows), with their norms interpolated
    linearly: exact endpoints, constant angular speed, falls back to lerp for (anti)parallel rows."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / so.clamp_min(1e-12), torch.full_like(so, 1 - t))
    wb = torch.where(safe, torch.sin(t * omega) / so.clamp_min(1e-12), torch.full_like(so, t))
    direction = wa * ua + wb * ub
    return F.normalize(direction, dim=-1) * ((1 - t) * na + t * nb)


TEXT_DIFF_NOISES = ("inverted", "shared")  # text_diff's x_T: the image's DDIM inversion, or fresh noise


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_eta(eta: Any) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")


def _check_weights(name: str, values: Sequence[float]) -> List[float]:
    """Interpolation weights: a non-empty sequence of finite numbers."""
    try:
        weights = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not weights or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {weights}")
    return weights


@dataclass
class UnCLIPOutput:
    images: Any
    image_embeds: torch.Tensor


# the models a call computes in float32 when they are bfloat16 on a CPU without fast bfloat16
_float32_models = float32_on_slow_bf16_cpu("prior", "decoder", "sr", "text_encoder", "image_encoder")


class UnCLIPPipeline:
    def __init__(self, prior: Any, decoder: Any, text_encoder: Any, image_encoder: Callable[[torch.Tensor], torch.Tensor],
                 *, noise_schedule: NoiseSchedule, prior_noise_schedule: Optional[NoiseSchedule] = None,
                 super_resolution: Any = None, num_steps: int = 50, prior_steps: int = 25, sr_steps: int = 25,
                 spacing: str = "trailing"):
        """``text_encoder(prompts) -> {"context", "context_mask", "pooled"}``; ``image_encoder(images)``
        gives normalised CLIP image embeddings (``clip.encode_image``). ``prior`` may be None for a
        pipeline that only varies, interpolates and text-diffs images (text-to-image needs it)."""
        for m in (decoder,) + tuple(m for m in (prior, super_resolution) if m is not None):
            check_denoiser(m)
        self.prior, self.decoder, self.sr = prior, decoder, super_resolution
        self.text_encoder, self.image_encoder = text_encoder, image_encoder
        self.noise_schedule = noise_schedule
        prior_noise = prior_noise_schedule or noise_schedule
        self.schedule = SamplingSchedule.ddim(noise_schedule, num_steps, spacing=spacing)
        self.prior_schedule = SamplingSchedule.ddim(prior_noise, prior_steps, spacing=spacing)
        self.sr_schedule = SamplingSchedule.ddim(noise_schedule, sr_steps, spacing=spacing)

    # -- stages ------------------------------------------------------------------------------
    @_float32_models
    @torch.no_grad()
    def sample_image_embeds(self, prompts: List[str], *, guidance: Guidance = 4.0, candidates: int = 2,
                            generator=None, progress=True, return_candidates: bool = False):
        """Prior sampling, best of ``candidates`` by cosine similarity to the text embedding
        (and all candidates (B, candidates, E) with ``return_candidates``). A 1-D tensor of
        ``guidance`` weights holds one per prompt (each applies to all of its candidates)."""
        _check_count("candidates", candidates)
        if self.prior is None:
            raise ValueError("this pipeline has no prior: text-to-image needs one (variations, interpolation and "
                             "text diffs do not)")
        guidance = map_weights(check_guidance("guidance", guidance),
                               lambda w: w.reshape(-1).repeat_interleave(candidates) if w.numel() == len(prompts) else w)
        text, empty = self.text_encoder(prompts), self.text_encoder([""] * len(prompts))
        rep = lambda d: {k: v.repeat_interleave(candidates, 0) for k, v in d.items()}  # noqa: E731
        prior_cond = self.prior.condition
        b, e = len(prompts), self.prior.out_channels
        z_T = randn((b * candidates, e), generator, model_placement(self.prior)[0])
        z = ddim_sample(self.prior, z_T, self.prior_schedule, cond=prior_cond(rep(text)), uncond=prior_cond(rep(empty)),
                        guidance=guidance, progress=progress).view(b, candidates, e)
        score = F.cosine_similarity(z, text["pooled"][:, None], dim=-1)
        best = z[torch.arange(b), score.argmax(dim=1)]
        return (best, z) if return_candidates else best

    def _decoder_cond(self, text: dict, embeds: torch.Tensor) -> dict:
        return {**text, "image_embed": embeds}

    @_float32_models
    @torch.no_grad()
    def decode(self, image_embeds: torch.Tensor, prompts: Optional[List[str]] = None, *, x_T=None,
               guidance: Guidance = 3.0, eta: float = 0.0, generator=None, sr_guidance: Guidance = 3.0,
               callback=None, progress=True) -> torch.Tensor:
        """Decoder (and SR) from image embeddings; ``prompts`` add the caption tokens as context."""
        _check_eta(eta)
        guidance, sr_guidance = check_guidance("guidance", guidance), check_guidance("sr_guidance", sr_guidance)
        b = image_embeds.shape[0]
        text = self.text_encoder(prompts if prompts is not None else [""] * b)
        empty = self.text_encoder([""] * b)
        s = self.decoder.config.image_size
        device = model_placement(self.decoder)[0]
        if x_T is None:
            x_T = randn((b, self.decoder.in_channels, s, s), generator, device)
        uncond = self._decoder_cond(empty, torch.zeros_like(image_embeds))
        x = ddim_sample(self.decoder, x_T, self.schedule, cond=self._decoder_cond(text, image_embeds), uncond=uncond,
                        guidance=guidance, eta=eta, generator=generator, callback=callback, progress=progress)
        x = x.clamp(-1, 1)
        if self.sr is not None:
            side = self.sr.config.image_size
            cond = {**text, "low_res": x, "noise_level": torch.zeros(b, dtype=torch.long)}
            x = ddim_sample(self.sr, randn((b, 3, side, side), generator, device), self.sr_schedule, cond=cond,
                            uncond={**empty, "low_res": x, "noise_level": cond["noise_level"]}, guidance=sr_guidance,
                            generator=generator, progress=progress).clamp(-1, 1)
        return x

    # -- the four uses -----------------------------------------------------------------------
    @_float32_models
    @torch.no_grad()
    def __call__(self, prompt: Union[str, Sequence[str]], *, num_images_per_prompt: int = 1,
                 prior_guidance: Guidance = 4.0, guidance: Guidance = 3.0, generator=None, output_type: str = "pil",
                 callback=None, progress: bool = True) -> UnCLIPOutput:
        _check_count("num_images_per_prompt", num_images_per_prompt)
        prior_guidance, guidance = check_guidance("prior_guidance", prior_guidance), check_guidance("guidance", guidance)
        prompts = [p for p in prompt_list("prompt", prompt) for _ in range(num_images_per_prompt)]
        z = self.sample_image_embeds(prompts, guidance=prior_guidance, generator=generator, progress=progress)
        images = self.decode(z, prompts, guidance=guidance, generator=generator, callback=callback, progress=progress)
        return UnCLIPOutput(convert_output(images, output_type), z)

    def _embed(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(check_image("image", image))

    def _decoder_input(self, image: torch.Tensor) -> torch.Tensor:
        s = self.decoder.config.image_size
        return image if image.shape[-1] == s else F.interpolate(image, size=(s, s), mode="area")

    @_float32_models
    @torch.no_grad()
    def variations(self, image: torch.Tensor, *, num_variations: int = 4, eta: float = 0.1, guidance: Guidance = 1.0,
                   generator=None, output_type: str = "pil", progress: bool = True) -> UnCLIPOutput:
        """Decode the image's own embedding from its DDIM-inverted x_T with η > 0 noise (§3.1).

        The inversion runs the decoder unguided, so at ``guidance`` 1 and η = 0 x_T decodes back to the
        input; guidance > 1 decodes it with another model and moves the layout (guided inversion is
        unstable at w = 3). η sets how far the variations stray. On a zero-terminal-SNR schedule the
        first step starts from ᾱ = 0, where η = 1 gives σ = √(1 − ᾱ_prev) and discards x_T altogether:
        the variations are then fresh samples of the embedding. On the shipped models, η = 0.1 at
        guidance 1 keeps the object colour and cell about four times in five with visible variety
        (η = 1, guidance 3: colour six times in ten, cell a quarter of the time)."""
        _check_count("num_variations", num_variations)
        _check_eta(eta)
        guidance = check_guidance("guidance", guidance)  # before the inversion, not after
        z = self._embed(image)
        x_T = self._invert(image, z, progress)
        z = z.repeat_interleave(num_variations, 0)
        x_T = x_T.repeat_interleave(num_variations, 0)
        images = self.decode(z, x_T=x_T, guidance=guidance, eta=eta, generator=generator, progress=progress)
        return UnCLIPOutput(convert_output(images, output_type), z)

    def _invert(self, image: torch.Tensor, embeds: torch.Tensor, progress: bool) -> torch.Tensor:
        """x_T of the bipartite latent (z_i, x_T): the decoder's unguided DDIM inversion of the image."""
        empty = self.text_encoder([""] * image.shape[0])
        return ddim_invert(self.decoder, self._decoder_input(image), self.schedule,
                           cond=self._decoder_cond(empty, embeds), progress=progress)[-1]

    def _shared_noise(self, batch: int, generator) -> torch.Tensor:
        """One x_T per input, (batch, C, s, s): every output made from an input shares its noise."""
        s = self.decoder.config.image_size
        return randn((batch, self.decoder.in_channels, s, s), generator, model_placement(self.decoder)[0])

    @_float32_models
    @torch.no_grad()
    def interpolate(self, embeds_a: torch.Tensor, embeds_b: torch.Tensor, ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                    *, guidance: Guidance = 3.0, generator=None, output_type: str = "pil",
                    progress: bool = True) -> UnCLIPOutput:
        """Decode slerp(z_a, z_b, t) for each t, every pair from one shared x_T (pass image embeddings,
        e.g. ``pipe.image_encoder(images)``). (B, E) pairs give B·len(ts) images, pair-major: pair i's
        are images[i·len(ts) : (i+1)·len(ts)]."""
        ts = _check_weights("ts", ts)
        if embeds_a.dim() != 2 or embeds_a.shape != embeds_b.shape:
            raise ValueError(f"embeds_a and embeds_b must be (B, E) of one shape, got {tuple(embeds_a.shape)} and "
                             f"{tuple(embeds_b.shape)}")
        x_T = self._shared_noise(embeds_a.shape[0], generator).repeat_interleave(len(ts), 0)
        z = torch.stack([slerp(embeds_a, embeds_b, float(t)) for t in ts], dim=1).flatten(0, 1)
        images = self.decode(z, x_T=x_T, guidance=guidance, progress=progress)
        return UnCLIPOutput(convert_output(images, output_type), z)

    @_float32_models
    @torch.no_grad()
    def text_diff(self, image: torch.Tensor, source_caption: Union[str, Sequence[str]],
                  target_caption: Union[str, Sequence[str]], amounts: Sequence[float] = (0.0, 0.25, 0.5), *,
                  guidance: Guidance = 1.0, noise: str = "inverted", generator=None, output_type: str = "pil",
                  progress: bool = True) -> UnCLIPOutput:
        """Move each image's embedding towards its caption change: z_θ = slerp(z_i, |z_i|·z_d, θ) with
        z_d = normalise(z_t − z_t0) (§3.3), every θ from one x_T per image: with ``noise="inverted"``
        the image's DDIM inversion, decoded at η = 0 so that θ = 0 gives the input back at guidance 1
        (the paper's Figure 5; `variations` says why guidance > 1 loses the layout); with "shared" a
        fresh x_T from ``generator``. A batch of B images takes one caption pair (for all) or B of each,
        and gives B·len(amounts) images, image-major."""
        amounts = _check_weights("amounts", amounts)
        if noise not in TEXT_DIFF_NOISES:
            raise ValueError(f"noise must be one of {TEXT_DIFF_NOISES}, got {noise!r}")
        guidance = check_guidance("guidance", guidance)  # before the inversion, not after
        z_i = self._embed(image)
        b = z_i.shape[0]
        sources, targets = prompt_list("source_caption", source_caption), prompt_list("target_caption", target_caption)
        for name, captions in (("source_caption", sources), ("target_caption", targets)):
            if len(captions) not in (1, b):
                raise ValueError(f"{name} takes one caption or one per image ({b}), got {len(captions)}")
        sources, targets = sources * (b // len(sources)), targets * (b // len(targets))
        pooled = self.text_encoder(sources + targets)["pooled"]
        z_d = F.normalize(pooled[b:] - pooled[:b], dim=-1) * z_i.norm(dim=-1, keepdim=True)
        x_T = self._invert(image, z_i, progress) if noise == "inverted" else self._shared_noise(b, generator)
        x_T = x_T.repeat_interleave(len(amounts), 0)
        z = torch.stack([slerp(z_i, z_d, float(a)) for a in amounts], dim=1).flatten(0, 1)
        images = self.decode(z, x_T=x_T, guidance=guidance, progress=progress)
        return UnCLIPOutput(convert_output(images, output_type), z)
