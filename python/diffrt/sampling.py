"""Samplers as plain functions, one per algorithm (in the style of k-diffusion).

Classifier-free guidance runs as **one** batched model call per step on ``[uncond; cond]``; the
guidance combination, rescale, thresholding and the update itself run fused in
:func:`diffrt.ops.ddim_step`. Guidance weights come from a schedule object, so the oscillating
guidance of Imagen Editor / Imagen Video is one line.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Protocol, Union

import torch
from tqdm.auto import tqdm

from . import ops
from .denoiser import Denoiser, check_denoiser
from .schedules import SamplingSchedule


Weight = Union[float, torch.Tensor]  # one w for the batch, or a 1-D tensor of per-sample weights


class GuidanceSchedule(Protocol):
    """The guidance weight w at sampling step ``step`` (0 = noisiest) of ``num_steps``: a number, or
    a 1-D tensor of per-sample weights."""

    def __call__(self, step: int, num_steps: int) -> Weight: ...


@dataclass(frozen=True)
class ConstantGuidance:
    scale: Weight

    def __call__(self, step: int, num_steps: int) -> Weight:
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


Guidance = Union[None, float, torch.Tensor, GuidanceSchedule]


def as_guidance_schedule(guidance: Guidance) -> Optional[GuidanceSchedule]:
    if guidance is None:
        return None
    if isinstance(guidance, (int, float)) and not isinstance(guidance, bool):
        return ConstantGuidance(float(guidance))
    if isinstance(guidance, torch.Tensor):
        return ConstantGuidance(guidance)
    if callable(guidance):
        return guidance
    raise TypeError(f"guidance must be a number, a 1-D tensor of per-sample weights, a guidance schedule "
                    f"(step, num_steps) -> w, or None; got {type(guidance).__name__}")


def _step_weight(w: Any, step: int, batch: int) -> Optional[Weight]:
    """The guidance weight of one step as ops.ddim_step takes it, or None when every weight is 1
    (ε̃ = ε_u + 1·(ε_c − ε_u) = ε_c: only the conditional half is needed, and the rescale factor is 1)."""
    if isinstance(w, torch.Tensor):
        if w.dim() > 1 or w.numel() not in (1, batch) or w.is_complex() or w.dtype == torch.bool:
            raise ValueError(f"guidance at step {step} must be a number or a real 1-D tensor of 1 or {batch} "
                             f"per-sample weights, got a {w.dtype} tensor of shape {tuple(w.shape)}")
        return None if bool((w == 1).all()) else w.reshape(-1)
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise TypeError(f"guidance at step {step} must be a number or a 1-D tensor, got {type(w).__name__}")
    return None if w == 1 else float(w)


def _guidance_weights(guidance: Guidance, uncond: Any, num_steps: int, batch: int) -> List[Optional[Weight]]:
    """The weight of each sampling step (0 = noisiest); None where the step runs unguided."""
    weights = as_guidance_schedule(guidance)
    if weights is None:
        return [None] * num_steps
    ws = [_step_weight(weights(i, num_steps), i, batch) for i in range(num_steps)]
    if uncond is None and any(w is not None for w in ws):
        raise ValueError("guidance needs uncond (the unconditional condition, e.g. the empty prompt's embedding); "
                         "pass uncond=, or guidance=None to sample unguided")
    return ws


def _x0_options(fn: str, schedule: SamplingSchedule, model: Denoiser, **given: Any) -> dict:
    """The x̂0 options a sampler runs with: its keyword arguments, defaulting to the schedule's."""
    if schedule.prediction_type is not None and model.prediction_type != schedule.prediction_type:
        raise ValueError(f"the model predicts {model.prediction_type!r} but the schedule is configured for "
                         f"prediction_type={schedule.prediction_type!r}")
    options = {}
    for name, value in given.items():
        from_schedule = getattr(schedule, name)
        if value is not None and from_schedule is not None and value != from_schedule:
            raise ValueError(f"{fn}: {name}={value!r} conflicts with the schedule's {name}={from_schedule!r}; pass it "
                             f"in one place (dataclasses.replace(schedule, {name}=None) drops the schedule's)")
        options[name] = value if value is not None else from_schedule
    if options.get("clip_sample_range") is not None and options.get("dynamic_threshold") is not None:
        raise ValueError(f"{fn}: clip_sample_range={options['clip_sample_range']!r} and dynamic_threshold="
                         f"{options['dynamic_threshold']!r} exclude each other (one may come from the schedule)")
    return options


_PASS_THROUGH = (type(None), bool, int, float, str)


def cat_conditions(uncond: Any, cond: Any) -> Any:
    """[uncond; cond] along the batch dimension, for tensors and dicts/lists/tuples of them: how the
    samplers batch a guided step, and how a pipeline batches any two conditions of one structure
    into one model call (DiffEdit's [reference; query]). A leaf that is not a tensor (None, a
    number, a string: e.g. a LoRA scale in cross_attention_kwargs) is the same for the whole batch:
    it must be equal in both and is passed through once."""
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if set(cond) != set(uncond):
            raise ValueError(f"uncond must have the keys of cond {sorted(cond)}, got {sorted(uncond)}")
        return {k: cat_conditions(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)) and isinstance(uncond, (list, tuple)):
        if len(cond) != len(uncond):
            raise ValueError(f"uncond must have the {len(cond)} entries of cond, got {len(uncond)}")
        return type(cond)(cat_conditions(u, c) for u, c in zip(uncond, cond))
    if isinstance(cond, _PASS_THROUGH) and type(uncond) is type(cond):
        if cond != uncond:
            raise ValueError(f"cond and uncond hold different {type(cond).__name__} values ({cond!r}, {uncond!r}) "
                             f"where only tensors can differ per sample")
        return cond
    if isinstance(cond, torch.Tensor) or isinstance(uncond, torch.Tensor) or type(uncond) is not type(cond):
        raise TypeError(f"cannot batch cond ({type(cond).__name__}) with uncond ({type(uncond).__name__}): "
                        f"they must have the same structure")
    raise TypeError(f"cannot batch a condition of type {type(cond).__name__} (use tensors, dicts or lists of tensors)")


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    """N(0, I) shaped like x, drawn on the generator's device (as diffusers' randn_tensor does); with a
    list of generators (one per sample), row i from generator i alone."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([_noise_like(row, g) for row, g in zip(x.split(1), generator)])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _predict(model: Denoiser, x: torch.Tensor, t: int, cond: Any, batched_cond: Any, guided: bool) -> torch.Tensor:
    """The model output for x at timestep t: (B, …) unguided, or on [x; x] with the batched
    [uncond; cond] (2B, …) when guided."""
    b = x.shape[0]
    if not guided:
        return model(x, torch.full((b,), t, dtype=torch.long, device=x.device), cond).to(x.dtype)
    both = torch.cat([x, x])
    return model(both, torch.full((2 * b,), t, dtype=torch.long, device=x.device), batched_cond).to(x.dtype)


def _check_inputs(model, x, schedule, eta):
    check_denoiser(model)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("the starting sample must be a floating-point torch.Tensor")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"the starting sample must have a non-empty batch dimension, got shape {tuple(x.shape)}")
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
    dynamic_threshold_max: Optional[float] = None,
    generator: Union[None, torch.Generator, List[torch.Generator]] = None,
    callback: Optional[Callable[[dict], None]] = None,
    after_step: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12; η = 0 deterministic, η = 1 DDPM-like).

    ``guidance`` (a number, a 1-D tensor of per-sample weights, or a schedule (step, num_steps) -> w)
    needs ``uncond``; a step whose weights are all 1 needs only the conditional output and skips the
    unconditional half. x̂0 is clamped to ±``clip_sample_range`` or dynamically thresholded
    (quantile ``dynamic_threshold``, s bounded by ``dynamic_threshold_max``); these default to the
    schedule's settings. ``after_step(i, x)`` may replace the sample after step i (DiffEdit's and
    inpainting's mask blending); ``callback`` then receives {"i", "t", "x", "x0"}; η-noise comes
    from ``generator`` (or a list of generators, one per sample).
    """
    _check_inputs(model, x_T, schedule, eta)
    if isinstance(generator, (list, tuple)) and len(generator) != x_T.shape[0]:
        raise ValueError(f"generator is a list of {len(generator)} generators for a batch of {x_T.shape[0]}")
    x0_options = _x0_options("ddim_sample", schedule, model, clip_sample_range=clip_sample_range,
                             dynamic_threshold=dynamic_threshold, dynamic_threshold_max=dynamic_threshold_max)
    n = len(schedule)
    weights = _guidance_weights(guidance, uncond, n, x_T.shape[0])
    if guidance_rescale != 0.0 and guidance is None:
        raise ValueError(f"guidance_rescale={guidance_rescale} needs guidance (it rescales the guided prediction)")
    batched_cond = cat_conditions(uncond, cond) if any(w is not None for w in weights) else None
    x = x_T
    for i, (t, a_t, a_prev) in enumerate(tqdm(schedule, desc="DDIM", disable=not progress, leave=False)):
        w = weights[i]
        out = _predict(model, x, t, cond, batched_cond, w is not None)
        noise = _noise_like(x, generator) if eta > 0 else None
        result = ops.ddim_step(
            x, out, a_t, a_prev, eta=eta, noise=noise, prediction_type=model.prediction_type, **x0_options,
            guidance_scale=w, guidance_rescale=guidance_rescale if w is not None else 0.0,
            return_x0=callback is not None,
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
    clip_sample_range: Optional[float] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = True,
) -> List[torch.Tensor]:
    """DDIM inversion (Song et al. 2021, eq. 12 at η = 0 run towards noise): the exact reverse of
    :func:`ddim_sample`'s steps — each step goes from ᾱ_prev to ᾱ_t with the model evaluated at t,
    the timestep the sampler uses for that pair. ``guidance`` as in :func:`ddim_sample` (step i of
    the sampler is inversion step N − 1 − i); x̂0 is clamped to ±``clip_sample_range`` (default: the
    schedule's), as diffusers' DDIMInverseScheduler does with clip_sample.

    Returns the latents [x_0, x at timesteps[N−1], …, x at timesteps[0]] (increasing noise), so
    ``latents[-1]`` is x_T and ``latents[N − i]`` is the latent at ``schedule.timesteps[i]``.
    Use ``schedule.tail(strength)`` to encode only to a ratio of the way (DiffEdit, img2img).
    """
    _check_inputs(model, x_0, schedule, 0.0)
    if schedule.dynamic_threshold is not None:
        raise ValueError("ddim_invert has no dynamic thresholding (nor has diffusers' DDIMInverseScheduler), but the "
                         "schedule sets dynamic_threshold; invert with dataclasses.replace(schedule, dynamic_threshold="
                         "None, dynamic_threshold_max=None)")
    x0_options = _x0_options("ddim_invert", schedule, model, clip_sample_range=clip_sample_range)
    n = len(schedule)
    weights = _guidance_weights(guidance, uncond, n, x_0.shape[0])
    batched_cond = cat_conditions(uncond, cond) if any(w is not None for w in weights) else None
    latents = [x_0]
    x = x_0
    steps = list(schedule)[::-1]
    for j, (t, a_t, a_prev) in enumerate(tqdm(steps, desc="DDIM inversion", disable=not progress, leave=False)):
        w = weights[n - 1 - j]
        out = _predict(model, x, t, cond, batched_cond, w is not None)
        x = ops.ddim_invert_step(x, out, a_prev, a_t, prediction_type=model.prediction_type, guidance_scale=w,
                                 **x0_options)
        latents.append(x)
        if callback is not None:
            callback({"i": j, "t": t, "x": x})
    return latents
