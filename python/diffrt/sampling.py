"""Samplers as plain functions, one per algorithm (in the style of k-diffusion).

Classifier-free guidance runs as **one** batched model call per step on ``[uncond; cond]``; the
guidance combination, rescale, thresholding and the update itself run fused in
:func:`diffrt.ops.ddim_step`. Guidance weights come from a schedule object, so the oscillating
guidance of Imagen Editor / Imagen Video is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Union

import torch
from tqdm.auto import tqdm

from . import ops
from .denoiser import Denoiser, check_denoiser
from .schedules import SamplingSchedule


class GuidanceSchedule(Protocol):
    """The guidance weight w at sampling step ``step`` (0 = noisiest) of ``num_steps``."""

    def __call__(self, step: int, num_steps: int) -> float: ...


@dataclass(frozen=True)
class ConstantGuidance:
    scale: float

    def __call__(self, step: int, num_steps: int) -> float:
        return self.scale


@dataclass(frozen=True)
class OscillatingGuidance:
    """Alternate a high and a low weight (high first) over the first ``num_oscillating_steps``
    steps (all steps if None), then hold ``hold`` (default: ``low``) — the oscillating guidance
    of Imagen Video (Ho et al. 2022) that Imagen Editor uses between 1 and 30 on its base model."""

    high: float = 30.0
    low: float = 1.0
    num_oscillating_steps: Optional[int] = None
    hold: Optional[float] = None

    def __call__(self, step: int, num_steps: int) -> float:
        k = num_steps if self.num_oscillating_steps is None else self.num_oscillating_steps
        if step < k:
            return self.high if step % 2 == 0 else self.low
        return self.low if self.hold is None else self.hold


Guidance = Union[None, float, GuidanceSchedule]


def as_guidance_schedule(guidance: Guidance) -> Optional[GuidanceSchedule]:
    if guidance is None:
        return None
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        return ConstantGuidance(float(guidance))
    if callable(guidance):
        return guidance
    raise TypeError(f"guidance must be a number, a guidance schedule (step, num_steps) -> w, or None; got {type(guidance).__name__}")


def _cat_cond(uncond: Any, cond: Any) -> Any:
    """[uncond; cond] along the batch dimension, for tensors, dicts/lists of tensors, or None."""
    if cond is None and uncond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, dict):
        if set(cond) != set(uncond):
            raise ValueError(f"uncond must have the keys of cond {sorted(cond)}, got {sorted(uncond)}")
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_cat_cond(u, c) for u, c in zip(uncond, cond))
    raise TypeError(f"cannot batch a condition of type {type(cond).__name__} (use tensors, dicts or lists of tensors)")


def _noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """N(0, I) shaped like x, drawn on the generator's device (as diffusers' randn_tensor does)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _predict(model: Denoiser, x: torch.Tensor, t: int, cond: Any, uncond: Any, w: Optional[float]) -> torch.Tensor:
    """The model output for x at timestep t: (B, …) unguided, or the batched [uncond; cond] (2B, …)."""
    b = x.shape[0]
    if w is None:
        return model(x, torch.full((b,), t, dtype=torch.long, device=x.device), cond).to(x.dtype)
    both = torch.cat([x, x])
    return model(both, torch.full((2 * b,), t, dtype=torch.long, device=x.device), _cat_cond(uncond, cond)).to(x.dtype)


def _check_inputs(model, x, schedule, eta):
    check_denoiser(model)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("the starting sample must be a floating-point torch.Tensor")
    if not isinstance(schedule, SamplingSchedule):
        raise TypeError(f"schedule must be a diffrt.schedules.SamplingSchedule, got {type(schedule).__name__}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    x_T: torch.Tensor,
    schedule: SamplingSchedule,
    *,
    cond: Any = None,
    uncond: Any = None,
    guidance: Guidance = None,
    guidance_rescale: float = 0.0,
    eta: float = 0.0,
    clip_sample_range: Optional[float] = None,
    dynamic_threshold: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[dict], None]] = None,
    after_step: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12; η = 0 deterministic, η = 1 DDPM-like).

    Guidance runs when both ``uncond`` and ``guidance`` are given; a step whose weight is 1 needs
    only the conditional output and skips the unconditional half. ``after_step(i, x)`` may replace
    the sample after step i (DiffEdit's and inpainting's mask blending); ``callback`` then receives
    {"i", "t", "x", "x0"}; η-noise comes from ``generator``.
    """
    _check_inputs(model, x_T, schedule, eta)
    weights = as_guidance_schedule(guidance) if uncond is not None else None
    x = x_T
    n = len(schedule)
    for i, (t, a_t, a_prev) in enumerate(tqdm(schedule, desc="DDIM", disable=not progress, leave=False)):
        w = weights(i, n) if weights is not None else None
        w = None if w == 1.0 else w  # ε̃ = ε_c at w = 1 (and the rescale factor is 1)
        out = _predict(model, x, t, cond, uncond, w)
        noise = _noise_like(x, generator) if eta > 0 else None
        result = ops.ddim_step(
            x, out, a_t, a_prev, eta=eta, noise=noise, prediction_type=model.prediction_type,
            clip_sample_range=clip_sample_range, dynamic_threshold=dynamic_threshold, guidance_scale=w,
            guidance_rescale=guidance_rescale if w is not None else 0.0, return_x0=callback is not None,
        )
        x, x0 = result if callback is not None else (result, None)
        if after_step is not None:
            x = after_step(i, x)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


@torch.no_grad()
def ddim_invert(
    model: Denoiser,
    x_0: torch.Tensor,
    schedule: SamplingSchedule,
    *,
    cond: Any = None,
    uncond: Any = None,
    guidance: Guidance = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = True,
) -> List[torch.Tensor]:
    """DDIM inversion (Song et al. 2021, eq. 12 at η = 0 run towards noise): the exact reverse of
    :func:`ddim_sample`'s steps — each step goes from ᾱ_prev to ᾱ_t with the model evaluated at t,
    the timestep the sampler uses for that pair.

    Returns the latents [x_0, x at timesteps[N−1], …, x at timesteps[0]] (increasing noise), so
    ``latents[-1]`` is x_T and ``latents[N − i]`` is the latent at ``schedule.timesteps[i]``.
    Use ``schedule.tail(strength)`` to encode only to a ratio of the way (DiffEdit, img2img).
    """
    _check_inputs(model, x_0, schedule, 0.0)
    weights = as_guidance_schedule(guidance) if uncond is not None else None
    latents = [x_0]
    x = x_0
    n = len(schedule)
    steps = list(schedule)[::-1]
    for j, (t, a_t, a_prev) in enumerate(tqdm(steps, desc="DDIM inversion", disable=not progress, leave=False)):
        w = weights(n - 1 - j, n) if weights is not None else None
        w = None if w == 1.0 else w
        out = _predict(model, x, t, cond, uncond, w)
        x = ops.ddim_invert_step(x, out, a_prev, a_t, prediction_type=model.prediction_type, guidance_scale=w)
        latents.append(x)
        if callback is not None:
            callback({"i": j, "t": t, "x": x})
    return latents
