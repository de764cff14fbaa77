"""Imagic (Kawar et al. 2023): text-based real-image editing with a diffusion model, in three stages.

A. Optimise the target text embedding e_tgt → e_opt so the frozen model reconstructs the input
   (denoising loss on the input image, random t and noise). Only the text embedding moves: of a
   dict condition, the ``embedding_keys`` entries; the rest (masks, an image-conditioned UNet's
   image and mask) stays as the prompt encoder gives it, so e_opt has no pixel channel to the input.
B. Fine-tune the model on the input with e_opt frozen (all weights, or a parameter-efficient
   subset), so e_opt reproduces the image faithfully.
C. Interpolate ē = η·e_tgt + (1−η)·e_opt and sample. One fine-tuned model serves any sweep of η.

The paper's 100 / 1500 steps are for Imagen and Stable Diffusion; the defaults here suit diffrt's
small models. Every random draw (t, noise, sampling) comes from the caller's generator.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..denoiser import check_denoiser
from ..precision import compute_dtype
from ..sampling import Guidance, ddim_sample
from ..schedules import NoiseSchedule, SamplingSchedule
from ._common import (PixelCodec, check_guidance, check_image, convert_output, float32_on_slow_bf16_cpu, map_weights,
                      model_placement, needs_uncond, prompt_list, randn)


def _map_float(cond: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply fn to every floating-point tensor of a condition (tensor, dict or list of tensors)."""
    if isinstance(cond, torch.Tensor):
        return fn(cond) if cond.is_floating_point() else cond
    if isinstance(cond, dict):
        return {k: _map_float(v, fn) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_map_float(v, fn) for v in cond)
    return cond


def _float_leaves(cond: Any) -> List[torch.Tensor]:
    leaves: List[torch.Tensor] = []
    _map_float(cond, lambda t: leaves.append(t) or t)
    return leaves


def interpolate_condition(e_tgt: Any, e_opt: Any, eta: float) -> Any:
    """ē = η·e_tgt + (1−η)·e_opt, leaf by leaf (masks and other non-float parts from e_tgt)."""
    opt = iter(_float_leaves(e_opt))
    return _map_float(e_tgt, lambda t: eta * t + (1 - eta) * next(opt))


def _check_count(name: str, value: Any, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_etas(etas: Any) -> List[float]:
    """η values as a list of floats: one number or a non-empty sequence, every η finite (a NaN η
    makes a NaN condition and a black image)."""
    if isinstance(etas, (int, float)) and not isinstance(etas, bool):
        etas = [etas]
    try:
        values = [float(e) for e in etas]
    except (TypeError, ValueError):
        raise ValueError(f"etas must be a number or a sequence of numbers, got {etas!r}") from None
    if not values:
        raise ValueError("etas must not be empty")
    bad = [e for e in values if not math.isfinite(e)]
    if bad:
        raise ValueError(f"etas must be finite numbers, got {bad}")
    return values


EMBEDDING_KEYS = ("context", "pooled")  # diffrt's TextEncoder: token states and pooled embedding


@dataclass
class ImagicOutput:
    images: Any  # per output_type; one entry per η, in the order given
    etas: List[float]
    e_opt: Any


# the models a call computes in float32 when they are bfloat16 on a CPU without fast bfloat16
_float32_models = float32_on_slow_bf16_cpu("base_model", "model", "encode_prompt", "codec")


class ImagicPipeline:
    def __init__(self, model: nn.Module, noise_schedule: NoiseSchedule, encode_prompt: Callable[[List[str]], Any], *,
                 codec: Any = None, num_steps: int = 50, spacing: str = "trailing",
                 embedding_keys: Sequence[str] = EMBEDDING_KEYS):
        """``encode_prompt(prompts)`` gives the model's condition: a tensor (the text embedding itself)
        or a dict, whose ``embedding_keys`` entries are the text embedding that stages A and C change."""
        check_denoiser(model)
        if isinstance(embedding_keys, str) or not embedding_keys or \
                not all(isinstance(k, str) for k in embedding_keys):
            raise ValueError(f"embedding_keys must be a non-empty sequence of condition keys, got {embedding_keys!r}")
        self.embedding_keys = tuple(embedding_keys)
        self.base_model, self.noise_schedule, self.encode_prompt = model, noise_schedule, encode_prompt
        self.codec = codec or PixelCodec()
        self.schedule = SamplingSchedule.ddim(noise_schedule, num_steps, spacing=spacing)
        self.model: Optional[nn.Module] = None  # the fine-tuned copy, after fit()
        self.e_tgt = self.e_opt = None
        self._latent_shape = None

    def _split(self, cond: Any):
        """(the text embedding, the rest of the condition or None)."""
        if not isinstance(cond, dict):
            return cond, None
        keys = [k for k in self.embedding_keys if k in cond]
        if not keys:
            raise ValueError(f"the condition holds none of embedding_keys {list(self.embedding_keys)}: its keys are "
                             f"{sorted(cond)}")
        return {k: cond[k] for k in keys}, {k: v for k, v in cond.items() if k not in keys}

    @staticmethod
    def _join(embedding: Any, rest: Optional[dict]) -> Any:
        return embedding if rest is None else {**rest, **embedding}

    def _loss(self, model, x0, cond, generator):
        t = torch.randint(0, self.noise_schedule.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.noise_schedule.add_noise(x0, noise, t)
        target = self.noise_schedule.target(model.prediction_type, x0, noise, t)
        return F.mse_loss(model(x_t, t, cond).float(), target.float())

    @_float32_models
    def fit(self, image: torch.Tensor, target_prompt: str, *, embedding_steps: int = 100, embedding_lr: float = 1e-3,
            finetune_steps: int = 200, finetune_lr: float = 1e-4, finetune: str = "full",
            generator: Optional[torch.Generator] = None, autocast_bf16: bool = False, progress: bool = True):
        """Stages A and B. ``finetune``: "full" (all weights) or "efficient" (normalisation and bias
        parameters only). Keeps the base model untouched; the fine-tuned copy is ``self.model``."""
        x0 = check_image("image (encoded)", self.codec.encode(check_image("image", image)), self.base_model)
        if x0.shape[0] != 1:
            raise ValueError(f"Imagic edits one image at a time, got a batch of {x0.shape[0]}")
        if finetune not in ("full", "efficient"):
            raise ValueError(f"finetune must be 'full' or 'efficient', got {finetune!r}")
        _check_count("embedding_steps", embedding_steps)
        _check_count("finetune_steps", finetune_steps)
        _check_positive("embedding_lr", embedding_lr)
        _check_positive("finetune_lr", finetune_lr)
        prompt_list("target_prompt", target_prompt, 1)
        self._latent_shape = x0.shape
        generator = generator or torch.Generator().manual_seed(0)
        if autocast_bf16:  # float32 instead on a CPU without fast bfloat16 arithmetic (with a warning)
            autocast_bf16 = compute_dtype(torch.bfloat16, x0.device, what="ImagicPipeline.fit(autocast_bf16=True)",
                                          stacklevel=3) == torch.bfloat16
        autocast = torch.autocast(x0.device.type, dtype=torch.bfloat16) if autocast_bf16 else nullcontext()
        with torch.no_grad():
            self.e_tgt = self.encode_prompt([target_prompt])

        # A. optimise e_opt with the model frozen
        frozen = self.base_model
        requires = [p.requires_grad for p in frozen.parameters()]
        for p in frozen.parameters():
            p.requires_grad_(False)
        embedding, rest = self._split(self.e_tgt)
        e_opt = _map_float(embedding, lambda t: t.detach().clone().requires_grad_(True))
        opt = torch.optim.Adam(_float_leaves(e_opt), lr=embedding_lr)
        try:
            for _ in tqdm(range(embedding_steps), desc="Imagic A: embedding", disable=not progress, leave=False):
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = self._loss(frozen, x0, self._join(e_opt, rest), generator)
                loss.backward()
                opt.step()
        finally:
            for p, r in zip(frozen.parameters(), requires):
                p.requires_grad_(r)
        self.e_opt = self._join(_map_float(e_opt, lambda t: t.detach()), rest)

        # B. fine-tune a copy of the model on e_opt
        model = copy.deepcopy(self.base_model).train()
        params = [p for n, p in model.named_parameters()
                  if finetune == "full" or n.endswith(".bias") or "norm" in n]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=finetune_lr)
        for _ in tqdm(range(finetune_steps), desc="Imagic B: fine-tune", disable=not progress, leave=False):
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = self._loss(model, x0, self.e_opt, generator)
            loss.backward()
            opt.step()
        self.model = model.eval()
        return self

    @_float32_models
    @torch.no_grad()
    def __call__(self, etas: Sequence[float] = (0.7,), *, guidance: Guidance = 3.0,
                 generator: Optional[torch.Generator] = None, output_type: str = "pil",
                 progress: bool = True) -> ImagicOutput:
        """Stage C: one image per η from the same initial noise (so the sweep is comparable).
        ``guidance`` is a number, a 1-D tensor of one weight per η (or one for all), or a schedule
        (step, num_steps) -> w (whose tensors also hold one weight per η), as in :func:`ddim_sample`."""
        if self.model is None:
            raise RuntimeError("call fit(image, target_prompt) first")
        etas = check_etas(etas)
        guidance = check_guidance("guidance", guidance)
        if isinstance(guidance, torch.Tensor) and guidance.numel() not in (1, len(etas)):
            raise ValueError(f"guidance holds one weight per η or one for all: 1 or {len(etas)} weights, got "
                             f"{guidance.numel()}")
        x_T = randn(self._latent_shape, generator, model_placement(self.model)[0])
        uncond = self.encode_prompt([""]) if needs_uncond(guidance) else None
        images = []
        for i, eta in enumerate(etas):
            (target, rest), (optimised, _) = self._split(self.e_tgt), self._split(self.e_opt)
            cond = self._join(interpolate_condition(target, optimised, eta), rest)
            # each η samples alone (batch 1): its own weight of a per-η tensor
            weight_i = map_weights(guidance, lambda w: w.reshape(-1)[i:i + 1] if w.numel() == len(etas) else w)
            x = ddim_sample(self.model, x_T.clone(), self.schedule, cond=cond, uncond=uncond, guidance=weight_i,
                            progress=progress)
            images.append(self.codec.decode(x))
        return ImagicOutput(convert_output(torch.cat(images), output_type), etas, self.e_opt)
