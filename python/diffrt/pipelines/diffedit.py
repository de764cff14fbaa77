"""DiffEdit (Couairon et al. 2022): mask-guided semantic image editing with no user mask.

1. Mask (§3.2): noise the input n times to the encoding ratio r, predict the noise under the query
   (target) and the reference (source) text — all n draws × 2 prompts in **one** batched model
   call — and take the normalised, binarised mean |ε_q − ε_r| (fused in ``ops.diffedit_mask``).
2. Encode (§3.1): DDIM-invert the input to ratio r with the reference text, keeping every latent.
3. Decode (§3.3): DDIM-sample from x_r with the query text; after every step, outside the mask the
   sample is replaced by the inverted latent **at the same timestep**, so the last step restores
   x_0 exactly outside the mask (diffusers' pipeline blends one step late and ends on the
   latent of the first inversion step instead).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import ops
from ..denoiser import Denoiser, check_denoiser
from ..sampling import Guidance, cat_conditions, ddim_invert, ddim_sample
from ..schedules import NoiseSchedule, SamplingSchedule
from ._common import (PixelCodec, check_guidance, check_image, convert_output, float32_on_slow_bf16_cpu, needs_uncond,
                      prompt_list, randn)


@dataclass
class DiffEditOutput:
    images: Any  # per output_type
    mask: torch.Tensor  # (B, 1, h, w) at the model's resolution, 1 = edited
    latents: List[torch.Tensor]  # the inverted latents, x_0 first


POSTERIORS = ("mean", "sample")
MASK_NORMALISATIONS = ("mean", "max")  # generate_mask's normalise


# the models a call computes in float32 when they are bfloat16 on a CPU without fast bfloat16
_float32_models = float32_on_slow_bf16_cpu("model", "encode_prompt", "codec")


class DiffEditPipeline:
    def __init__(self, model: Denoiser, noise_schedule: NoiseSchedule, encode_prompt: Callable[[List[str]], Any], *,
                 codec: Any = None, num_steps: int = 50, spacing: str = "trailing", steps_offset: int = 0,
                 set_alpha_to_one: bool = True, strength_rounding: str = "ceil", posterior: str = "mean"):
        """``encode_prompt(prompts) -> cond`` gives the model's condition for a list of prompts
        (e.g. a :class:`diffrt.models.TextEncoder`); ``codec`` maps images to the model's latents
        and back (default: pixel space).

        ``spacing``, ``steps_offset`` and ``set_alpha_to_one`` build the DDIM schedule as diffusers'
        DDIMScheduler config does. ``strength_rounding`` ("ceil" or diffusers' "floor") is how a
        strength becomes a number of steps (:meth:`SamplingSchedule.tail`). ``posterior="sample"``
        encodes with a draw from the codec's posterior (a VAE's latent_dist.sample) taken from the
        call's generator, as diffusers' pipeline does — the mask gets one draw per noise draw;
        "mean" (default) encodes with the posterior mean. It needs a codec with
        ``posterior(images)`` returning the posterior of each image (``.mean``, and
        ``.sample(generator, copies=)``: ``copies`` draws per image, image-major), e.g.
        :class:`diffrt.integrations.diffusers.DiffusersLatentCodec`.

        Each call encodes its image once: mask estimation, inversion and decoding all start from
        that one encoding (with posterior="sample", from draws of its one posterior).
        """
        check_denoiser(model)
        self.model, self.noise_schedule, self.encode_prompt = model, noise_schedule, encode_prompt
        self.codec = codec or PixelCodec()
        self.schedule = SamplingSchedule.ddim(noise_schedule, num_steps, spacing=spacing, steps_offset=steps_offset,
                                              set_alpha_to_one=set_alpha_to_one)
        self.schedule.tail(1.0, rounding=strength_rounding)  # validates the name
        self.strength_rounding = strength_rounding
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        if posterior == "sample":
            if not callable(getattr(self.codec, "posterior", None)):
                raise ValueError(f"posterior='sample' needs a codec with posterior(images) (a VAE, e.g. "
                                 f"DiffusersLatentCodec); {type(self.codec).__name__} has no posterior to sample")
        self.posterior = posterior

    def _encode(self, image: torch.Tensor) -> Any:
        """The image through the codec, the one time a call encodes it: its latents, or with
        posterior="sample" its posterior (drawn from by :meth:`_latents`)."""
        image = check_image("image", image)
        if self.posterior == "sample":
            return self.codec.posterior(image)
        return check_image("image (encoded)", self.codec.encode(image), self.model)

    def _latents(self, encoded: Any, generator: Optional[torch.Generator], copies: int = 1) -> torch.Tensor:
        """The latents of each image, ``copies`` times in a row (image-major); with posterior="sample",
        each copy is its own posterior draw from ``generator``."""
        if self.posterior == "sample":
            return check_image("image (encoded)", encoded.sample(generator, copies=copies), self.model)
        return encoded.repeat_interleave(copies, 0)

    def _tail(self, strength: float) -> SamplingSchedule:
        return self.schedule.tail(strength, rounding=self.strength_rounding)

    @staticmethod
    def _mask_weight(name: str, guidance: Guidance, b: int, n: int) -> Optional[Union[float, torch.Tensor]]:
        """The mask's guidance as cfg_combine takes it on the b·n rows (None: unguided). A schedule is
        refused: the mask comes from one model call at one timestep, so there are no steps to schedule."""
        guidance = check_guidance(name, guidance)
        if not needs_uncond(guidance):
            return None
        if not isinstance(guidance, (numbers.Real, torch.Tensor)):
            raise TypeError(f"{name} must be a number or a 1-D tensor of per-image weights, not a guidance schedule: "
                            f"the mask is estimated in one model call at one timestep, so there are no steps to schedule")
        if isinstance(guidance, torch.Tensor):
            if guidance.numel() not in (1, b):
                raise ValueError(f"{name} must hold 1 or {b} per-image weights, got {guidance.numel()}")
            if bool((guidance == 1).all()):
                return None
            return guidance.reshape(-1).expand(b).repeat_interleave(n)  # one weight per image, on its n draws
        return guidance

    @_float32_models
    @torch.no_grad()
    def generate_mask(self, image: torch.Tensor, source_prompt: Union[str, Sequence[str]],
                      target_prompt: Union[str, Sequence[str]], *, n: int = 10, strength: float = 0.5,
                      clamp_ratio: float = 3.0, threshold: Optional[float] = 0.5, smooth: int = 0, dilate: int = 0,
                      normalise: str = "mean", guidance: Guidance = None,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The edit mask (B, 1, h, w) at the model's resolution: 1 where the two prompts disagree.
        With ``guidance`` both noise estimates are classifier-free guided (the batch becomes
        n draws × [uncond, reference, uncond, query], still one model call); it is a number or a
        1-D tensor of one weight per image (not a schedule: the mask is one model call at one
        timestep). Guidance leaves the mask as it is, up to rounding: both estimates share the
        unconditional pass, so ε̃_q − ε̃_r = w·(ε_q − ε_r) and the normalisation divides w out (a
        weight of 0 gives an empty mask); it is accepted as diffusers' ``generate_mask`` accepts it.
        A low ``strength`` (0.1–0.3) often places the mask better than the paper's 0.5: with little
        noise the model sees where each object is. ``smooth`` box-blurs the soft map (radius in
        pixels) before thresholding; ``dilate`` grows it. ``normalise`` maps the mean |ε_q − ε_r| to
        [0, 1] before the threshold: "mean" (the paper's) clamps it at ``clamp_ratio`` × its mean and
        divides by that bound, so the mask is the pixels above threshold·ratio × the mean — an area
        that barely depends on the object's size; "max" divides the (smoothed) map by its maximum,
        so the mask is the pixels within ``threshold`` of the strongest response and shrinks with a
        small object (``clamp_ratio`` unused)."""
        self._check_n(n)
        self._check_mask_shape(normalise, smooth, dilate)
        b = check_image("image", image).shape[0]
        src = prompt_list("source_prompt", source_prompt, b, allow_empty=True)
        tgt = prompt_list("target_prompt", target_prompt, b)
        weight = self._mask_weight("guidance", guidance, b, n)
        self._tail(strength)  # a bad strength fails before the encoder runs
        return self._mask(self._encode(image), src, tgt, n=n, strength=strength, clamp_ratio=clamp_ratio,
                          threshold=threshold, smooth=smooth, dilate=dilate, normalise=normalise, weight=weight,
                          generator=generator)

    @staticmethod
    def _check_n(n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")

    @staticmethod
    def _check_mask_shape(normalise: str, smooth: int, dilate: int) -> None:
        if normalise not in MASK_NORMALISATIONS:
            raise ValueError(f"normalise must be one of {MASK_NORMALISATIONS}, got {normalise!r}")
        for name, value in (("smooth", smooth), ("dilate", dilate)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (a radius in pixels), got {value!r}")

    def _mask(self, encoded: Any, src: List[str], tgt: List[str], *, n: int, strength: float, clamp_ratio: float,
              threshold: Optional[float], smooth: int, dilate: int, normalise: str,
              weight: Optional[Union[float, torch.Tensor]], generator: Optional[torch.Generator]) -> torch.Tensor:
        """§3.2 on the encoded image: noise n copies to ratio ``strength``, predict ε under both prompts."""
        b = len(src)
        t = self._tail(strength).timesteps[0]
        x0 = self._latents(encoded, generator, copies=n)  # (b·n, …): n copies of each image
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.noise_schedule.add_noise(x0, noise, torch.full((b * n,), t, device=x0.device))
        cond_q = self.encode_prompt([p for p in tgt for _ in range(n)])
        cond_r = self.encode_prompt([p for p in src for _ in range(n)])
        guided = weight is not None
        if guided:
            empty = self.encode_prompt([""] * (b * n))
            conds = cat_conditions(cat_conditions(empty, cond_r), cat_conditions(empty, cond_q))
        else:
            conds = cat_conditions(cond_r, cond_q)
        copies = 4 if guided else 2
        out = self.model(torch.cat([x_t] * copies), torch.full((copies * b * n,), t, device=x0.device, dtype=torch.long),
                         conds).to(x0.dtype)  # one call: n draws × 2 prompts (× CFG)
        if guided:
            halves = out.chunk(2)  # [uncond; reference], [uncond; query]
            eps_r, eps_q = (ops.cfg_combine(h, weight) for h in halves)
        else:
            eps_r, eps_q = out.chunk(2)
        eps_q, eps_r = (e.reshape(b, n, *e.shape[1:]) for e in (eps_q, eps_r))
        if smooth == 0 and normalise == "mean":
            mask = ops.diffedit_mask(eps_q, eps_r, clamp_ratio=clamp_ratio, threshold=threshold)
        else:
            # "max": a ratio of h·w never clamps (no pixel exceeds the map's sum), so soft = map / sum
            ratio = clamp_ratio if normalise == "mean" else float(eps_q.shape[-1] * eps_q.shape[-2])
            soft = ops.diffedit_mask(eps_q, eps_r, clamp_ratio=ratio, threshold=None)
            if smooth:
                soft = F.avg_pool2d(soft, 2 * smooth + 1, stride=1, padding=smooth, count_include_pad=False)
            if normalise == "max":
                peak = soft.amax(dim=(2, 3), keepdim=True)
                soft = torch.where(peak > 0, soft / torch.where(peak > 0, peak, 1.0), soft)  # NaN stays NaN
            mask = soft if threshold is None else torch.where(soft.isnan(), soft, (soft > threshold).float())
        if dilate:
            mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
        return mask

    @_float32_models
    @torch.no_grad()
    def invert(self, image: torch.Tensor, prompt: Union[str, Sequence[str]], *, strength: float = 0.5,
               generator: Optional[torch.Generator] = None, progress: bool = True) -> List[torch.Tensor]:
        """DDIM encoding of the image to ratio ``strength`` under ``prompt`` (may be ''): [x_0, …, x_r]."""
        return self._invert(self._latents(self._encode(image), generator), prompt, strength, progress)

    def _invert(self, x0: torch.Tensor, prompt: Union[str, Sequence[str]], strength: float,
                progress: bool) -> List[torch.Tensor]:
        cond = self.encode_prompt(prompt_list("prompt", prompt, x0.shape[0], allow_empty=True))
        return ddim_invert(self.model, x0, self._tail(strength), cond=cond, progress=progress)

    @_float32_models
    @torch.no_grad()
    def __call__(self, image: torch.Tensor, source_prompt: Union[str, Sequence[str]],
                 target_prompt: Union[str, Sequence[str]], *, mask: Optional[torch.Tensor] = None,
                 strength: float = 0.5, guidance: Guidance = 7.5, n: int = 10, clamp_ratio: float = 3.0,
                 threshold: float = 0.5, mask_strength: Optional[float] = None, mask_normalise: str = "mean",
                 mask_smooth: int = 0, mask_guidance: Guidance = None,
                 generator: Optional[torch.Generator] = None, output_type: str = "pil",
                 callback: Optional[Callable[[dict], None]] = None, progress: bool = True) -> DiffEditOutput:
        """Edit ``image`` from ``source_prompt`` (may be '') to ``target_prompt`` (mask estimated unless
        given, at the encoding ratio ``mask_strength``, by default ``strength``, as diffusers'
        ``mask_encode_strength``; ``mask_normalise``, ``mask_smooth`` and ``mask_guidance`` are
        :meth:`generate_mask`'s ``normalise``, ``smooth`` and ``guidance``). ``guidance`` guides the
        decoding: a number, a 1-D tensor of one weight per image, or a schedule (step, num_steps) -> w,
        as in :func:`ddim_sample`. The image is encoded once; with posterior="sample" the inversion
        and then the mask each draw their latents from ``generator`` (in that order, from the one
        posterior)."""
        guidance = check_guidance("guidance", guidance)
        b = check_image("image", image).shape[0]
        if mask is None:
            self._check_n(n)
            self._check_mask_shape(mask_normalise, mask_smooth, 0)
            weight = self._mask_weight("mask_guidance", mask_guidance, b, n)
            if mask_strength is None:
                mask_strength = strength
            elif isinstance(mask_strength, bool) or not isinstance(mask_strength, numbers.Real) \
                    or not 0 < mask_strength <= 1:
                raise ValueError(f"mask_strength must lie in (0, 1], got {mask_strength!r}")
            self._tail(mask_strength)  # a ratio that keeps no step fails before the encoder runs
        encoded = self._encode(image)
        x0 = self._latents(encoded, generator)
        src = prompt_list("source_prompt", source_prompt, b, allow_empty=True)
        tgt = prompt_list("target_prompt", target_prompt, b)
        if mask is None:
            mask = self._mask(encoded, src, tgt, n=n, strength=mask_strength, clamp_ratio=clamp_ratio,
                              threshold=threshold, smooth=mask_smooth, dilate=0, normalise=mask_normalise,
                              weight=weight, generator=generator)
        elif mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != x0.shape[-2:]:
            raise ValueError(f"mask must have shape (B or 1, 1, {x0.shape[-2]}, {x0.shape[-1]}), got {tuple(mask.shape)}")
        mask = mask.to(x0.dtype)
        latents = self._invert(x0, src, strength, progress)
        schedule = self._tail(strength)
        n_steps = len(schedule)

        def keep_outside_mask(i: int, x: torch.Tensor) -> torch.Tensor:
            # after step i the sample sits at the level of inverted latent n_steps − 1 − i
            return ops.mask_blend(mask, x, latents[n_steps - 1 - i])

        x = ddim_sample(self.model, latents[-1], schedule, cond=self.encode_prompt(tgt),
                        uncond=self.encode_prompt([""] * b) if needs_uncond(guidance) else None,
                        guidance=guidance, generator=generator, callback=callback,
                        after_step=keep_outside_mask, progress=progress)
        return DiffEditOutput(convert_output(self.codec.decode(x), output_type), mask, latents)
