"""diffusers' DDIMScheduler and DDIMInverseScheduler with ``step`` run by diffrt's fused DDIM kernel.

Drop-in subclasses: the same config, ``set_timesteps``, timesteps and ᾱ table (so ``from_config`` of a
diffusers scheduler gives the same schedule); only ``step`` differs, computing x_prev and x̂0 in one
pass of :func:`diffrt.ops.ddim_step` / :func:`diffrt.ops.ddim_invert_step` on the ᾱ values diffusers
looks up. Results equal diffusers' to float32 rounding (tests/test_diffusers_parity.py checks the ops;
tests/test_accelerate.py whole pipelines).

Importing this module imports diffusers: :func:`diffrt.integrations.accelerate.accelerate` does so only
when it swaps a scheduler.
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops import ddim_invert_step, ddim_step

__all__ = ["FusedDDIMInverseScheduler", "FusedDDIMScheduler"]


def _require_timesteps(scheduler) -> None:
    if scheduler.num_inference_steps is None:
        raise ValueError(f"{type(scheduler).__name__}.step: call set_timesteps first (num_inference_steps is None)")


def _clip_options(config, *, thresholding: bool = True) -> dict:
    """diffusers' x̂0 clipping as ddim_step arguments: thresholding wins over clip_sample."""
    if thresholding and config.get("thresholding", False):
        return {"dynamic_threshold": float(config.dynamic_thresholding_ratio),
                "dynamic_threshold_max": float(config.sample_max_value)}
    if config.get("clip_sample", False):
        return {"clip_sample_range": float(config.clip_sample_range)}
    return {}


class FusedDDIMScheduler(DDIMScheduler):
    """``DDIMScheduler`` whose ``step`` is one call of :func:`diffrt.ops.ddim_step`."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True):
        _require_timesteps(self)
        timestep = int(timestep)
        # DDIMScheduler.step: prev_t = t − T//N, and final_alpha_cumprod once prev_t < 0
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_t = float(self.alphas_cumprod[timestep])
        alpha_prev = float(self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod)
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both (as DDIMScheduler.step)")
            noise = variance_noise
            if noise is None:  # drawn exactly as DDIMScheduler.step draws it
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=model_output.dtype)
            noise = noise.to(sample.dtype)
        clip = _clip_options(self.config)
        # diffusers re-derives ε̂ from x̂0 under use_clipped_model_output even without clipping, which is ε̂ itself
        # up to rounding; the kernel re-derives it only where clipping changed x̂0.
        prev_sample, pred_original_sample = ddim_step(
            sample, model_output.to(sample.dtype), alpha_t, alpha_prev, eta=float(eta), noise=noise,
            prediction_type=self.config.prediction_type, use_clipped_model_output=use_clipped_model_output,
            return_x0=True, **clip,
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


class FusedDDIMInverseScheduler(DDIMInverseScheduler):
    """``DDIMInverseScheduler`` whose ``step`` is one call of :func:`diffrt.ops.ddim_invert_step`."""

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        _require_timesteps(self)
        # DDIMInverseScheduler.step: from ᾱ at min(t − T//N, T − 1) (initial_alpha_cumprod below 0) to ᾱ_t
        next_timestep = int(timestep)
        train_steps = self.config.num_train_timesteps
        current = min(next_timestep - train_steps // self.num_inference_steps, train_steps - 1)
        alpha_t = float(self.alphas_cumprod[current] if current >= 0 else self.initial_alpha_cumprod)
        alpha_next = float(self.alphas_cumprod[next_timestep])
        prev_sample, pred_original_sample = ddim_invert_step(
            sample, model_output.to(sample.dtype), alpha_t, alpha_next, prediction_type=self.config.prediction_type,
            return_x0=True, **_clip_options(self.config, thresholding=False),
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
