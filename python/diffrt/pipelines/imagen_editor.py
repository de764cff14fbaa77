"""Imagen Editor (Wang et al. 2023): text-guided inpainting over a cascade.

Every stage sees the full-resolution input image (its region to repaint removed) and the mask
through a learned strided convolution (the UNet's ``DownsampleCond``), not a resized copy — the
paper found resizing leaves seams at the mask border. The base stage samples with oscillating
classifier-free guidance (default: alternating 30 and 1, Imagen Video's recipe, which the paper
credits for both fidelity and text alignment); the super-resolution stage upsamples the base
output, noise-augmented to level ``noise_aug_level``. An optional final composite copies the
unmasked pixels of the input exactly. With no image (or an all-ones mask) it is text-to-image.

Guidance (``guidance`` for the base stage, ``sr_guidance`` for super-resolution) is a number, a
1-D tensor with one weight per output image, or a schedule (step, num_steps) -> w, as in
:func:`diffrt.ddim_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch

from .. import ops
from ..denoiser import check_denoiser
from ..sampling import Guidance, OscillatingGuidance, ddim_sample
from ..schedules import NoiseSchedule, SamplingSchedule
from ..images import from_pil
from ._common import (Generators, as_mask, check_generators, check_guidance, check_image, convert_output,
                      float32_on_slow_bf16_cpu, model_placement, prompt_list, randn)


@dataclass
class ImagenEditorOutput:
    images: Any  # per output_type, at the last stage's resolution
    base: torch.Tensor  # the base stage's samples, (B, 3, h, w) in [−1, 1]


def _merge(*conds: dict) -> dict:
    out: dict = {}
    for c in conds:
        out.update(c)
    return out


# the models a call computes in float32 when they are bfloat16 on a CPU without fast bfloat16
_float32_models = float32_on_slow_bf16_cpu("base", "sr", "encode_prompt")


class ImagenEditorPipeline:
    def __init__(self, base: Any, noise_schedule: NoiseSchedule, encode_prompt: Callable[[List[str]], dict], *,
                 super_resolution: Any = None, sr_noise_schedule: Optional[NoiseSchedule] = None,
                 num_steps: int = 50, sr_steps: int = 25, spacing: str = "trailing"):
        """``base`` and ``super_resolution`` are UNets with image conditioning (``cond_image``);
        ``encode_prompt(prompts) -> {"context", "context_mask", "pooled"}`` (a TextEncoder). The base
        stage samples ``num_steps`` DDIM steps, the super-resolution stage ``sr_steps``."""
        check_denoiser(base)
        if super_resolution is not None:
            check_denoiser(super_resolution)
        self.base, self.sr, self.encode_prompt = base, super_resolution, encode_prompt
        self.noise_schedule = noise_schedule
        self.sr_noise_schedule = sr_noise_schedule or noise_schedule
        self.schedule = SamplingSchedule.ddim(noise_schedule, num_steps, spacing=spacing)
        self.sr_schedule = SamplingSchedule.ddim(self.sr_noise_schedule, sr_steps, spacing=spacing)

    @staticmethod
    def _size(model) -> int:
        return model.config.image_size

    def _inputs(self, image, mask, batch: int):
        """The full-resolution input image and mask the cascade conditions on (1 = repaint). The image
        is a tensor in [−1, 1] or PIL image(s) (resized to the conditioning resolution); the mask a
        PIL image, numpy array or tensor of any size (resized to the image)."""
        last = self.sr or self.base
        side = last.config.cond_side
        if image is None:
            if mask is not None:
                raise ValueError("mask given without image")
            full = last.full_mask_condition(batch)
            if not full:
                raise ValueError("the cascade's UNets must take an image condition (cond_image)")
            return full["image"], full["mask"]
        if not isinstance(image, torch.Tensor):
            image = from_pil(image, size=side)
        image = check_image("image", image)
        if mask is None:
            raise ValueError("image given without mask (1 = region to repaint; an all-ones mask means text-to-image)")
        if image.shape[-2:] != (side, side):
            raise ValueError(f"image must be {side}×{side} (the cascade's conditioning resolution), got "
                             f"{tuple(image.shape[-2:])}")
        return image, as_mask(mask, side, image.shape[0]).to(image.dtype)

    def _stage_inputs(self, model, image, mask):
        return model.inpainting_condition(image, mask)  # the base stage of a cascade resizes to its own side

    @_float32_models
    @torch.no_grad()
    def __call__(self, prompt: Union[str, Sequence[str]], image: Optional[torch.Tensor] = None,
                 mask: Optional[torch.Tensor] = None, *, num_images_per_prompt: int = 1,
                 guidance: Guidance = OscillatingGuidance(high=30.0, low=1.0), sr_guidance: Guidance = 5.0,
                 guidance_rescale: float = 0.0, dynamic_threshold: Optional[float] = 0.995,
                 noise_aug_level: int = 100, composite: bool = True, eta: float = 0.0,
                 generator: Generators = None, output_type: str = "pil",
                 callback: Optional[Callable[[dict], None]] = None, progress: bool = True) -> ImagenEditorOutput:
        """``generator``: one generator for every draw, or a list with one per output image (prompt-major:
        the images of prompt 0, then of prompt 1, …), each image's noise then drawn from its own
        generator only, so an image does not depend on the others in its batch."""
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        guidance, sr_guidance = check_guidance("guidance", guidance), check_guidance("sr_guidance", sr_guidance)
        n_images = None if image is None else (image.shape[0] if isinstance(image, torch.Tensor) else
                                               len(image) if isinstance(image, (list, tuple)) else 1)
        prompts = prompt_list("prompt", prompt, n_images)
        image, mask = self._inputs(image, mask, len(prompts))
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        b = len(prompts)
        generator = check_generators(generator, b)
        image, mask = image.repeat_interleave(num_images_per_prompt, 0), mask.repeat_interleave(num_images_per_prompt, 0)
        text, empty = self.encode_prompt(prompts), self.encode_prompt([""] * b)

        device, _ = model_placement(self.base)
        image, mask = image.to(device), mask.to(device)

        def noise(shape):
            return randn(shape, generator, device)

        # base stage
        s = self._size(self.base)
        cond_in = self._stage_inputs(self.base, image, mask)
        x = ddim_sample(self.base, noise((b, 3, s, s)), self.schedule, cond=_merge(text, cond_in),
                        uncond=_merge(empty, cond_in), guidance=guidance, guidance_rescale=guidance_rescale,
                        dynamic_threshold=dynamic_threshold, eta=eta, generator=generator, callback=callback,
                        progress=progress)
        base_out = x.clamp(-1, 1)
        out = base_out
        # super-resolution stage: the base output, noise-augmented, as the low-resolution input
        if self.sr is not None:
            level = torch.full((b,), noise_aug_level, dtype=torch.long)
            low = self.sr_noise_schedule.add_noise(base_out, noise(base_out.shape), level) if noise_aug_level else base_out
            s = self._size(self.sr)
            cond_in = _merge(self._stage_inputs(self.sr, image, mask), {"low_res": low, "noise_level": level})
            x = ddim_sample(self.sr, noise((b, 3, s, s)), self.sr_schedule, cond=_merge(text, cond_in),
                            uncond=_merge(empty, cond_in), guidance=sr_guidance, dynamic_threshold=dynamic_threshold,
                            eta=eta, generator=generator, progress=progress)
            out = x.clamp(-1, 1)
        if composite:
            if out.shape[-1] != image.shape[-1]:
                raise ValueError("composite needs the last stage at the input resolution; pass composite=False")
            out = ops.mask_blend(mask, out, image)  # unmasked pixels copied exactly
        return ImagenEditorOutput(convert_output(out, output_type), base_out)
