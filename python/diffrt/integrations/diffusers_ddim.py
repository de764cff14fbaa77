"""diffusers' DDIMInverseScheduler with ``step`` run by diffrt's fused DDIM inversion kernel (the
forward schedulers are in :mod:`diffrt.integrations.schedulers`).

A drop-in subclass: the same config, ``set_timesteps``, timesteps and ᾱ table (so ``from_config`` of a
diffusers scheduler gives the same schedule); only ``step`` differs, computing x_next and x̂0 in one
pass of :func:`diffrt.ops.ddim_invert_step` on the ᾱ values diffusers looks up. Results equal diffusers' to float32 rounding (tests/test_diffusers_parity.py checks the ops;
tests/test_accelerate.py whole pipelines).

Importing this module imports diffusers: :func:`diffrt.integrations.accelerate.accelerate` does so only
when it swaps a scheduler.
"""

from __future__ import annotations


import torch
from diffusers import DDIMInverseScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from ..ops import ddim_invert_step

__all__ = ["FusedDDIMInverseScheduler"]


def _require_timesteps(scheduler) -> None:
    if scheduler.num_inference_steps is None:
        raise ValueError(f"{type(scheduler).__name__}.step: call set_timesteps first (num_inference_steps is None)")


def _clip_options(config) -> dict:
    """diffusers' x̂0 clipping as ddim_invert_step arguments (DDIMInverseScheduler has no thresholding)."""
    if config.get("clip_sample", False):
        return {"clip_sample_range": float(config.clip_sample_range)}
    return {}


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
            return_x0=True, **_clip_options(self.config),
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
