"""diffrt's DDIM step and inversion reproduce diffusers' DDIMScheduler / DDIMInverseScheduler.

The schedulers hand us ᾱ values; diffrt gets the same ᾱ as plain numbers and must produce the
same x_prev and x̂0 to float32 rounding. diffusers computes 1 − ᾱ_t in float32, which loses digits
near ᾱ_t = 1 (t ≈ 0); there the comparison allows diffusers' own error against the float64
reference, and diffrt must stay within float32 rounding of that reference.
"""

import pytest
import torch

from diffrt import ops
from tests._helpers import assert_close_to_ref, rand

diffusers = pytest.importorskip("diffusers")

NUM_STEPS = 25


def _alphas(scheduler, t):
    """ᾱ_t and ᾱ_prev exactly as DDIMScheduler.step looks them up."""
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    return float(a_t), float(a_prev)


def _assert_matches(got, diffusers_out, exact, scale):
    assert_close_to_ref(got, exact, dtype=torch.float32, scale=scale)
    slack = (diffusers_out.double() - exact).abs()
    assert_close_to_ref(got, diffusers_out, dtype=torch.float32, scale=scale, slack=slack)


def _scale(*tensors, alpha):
    return sum(t.abs().max().item() for t in tensors) / alpha**0.5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", ["none", "clip_sample", "thresholding"])
@pytest.mark.parametrize("use_clipped_model_output", [False, True])
def test_matches_ddim_scheduler_step(gen, prediction_type, eta, clip, use_clipped_model_output):
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=clip == "clip_sample",
        clip_sample_range=1.5,
        thresholding=clip == "thresholding",
        dynamic_thresholding_ratio=0.9,
        sample_max_value=2.5,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler.set_timesteps(NUM_STEPS)
    for t in scheduler.timesteps[[0, 7, NUM_STEPS - 1]].tolist():
        x, m, z = (rand(gen, 2, 4, 13, 11, scale=2.0) for _ in range(3))
        a_t, a_prev = _alphas(scheduler, t)
        want = scheduler.step(m, t, x, eta=eta, variance_noise=z, use_clipped_model_output=use_clipped_model_output)
        kwargs = dict(eta=eta, noise=z, prediction_type=prediction_type, use_clipped_model_output=use_clipped_model_output)
        if clip == "clip_sample":
            kwargs["clip_sample_range"] = 1.5
        if clip == "thresholding":
            kwargs.update(dynamic_threshold=0.9, dynamic_threshold_max=2.5)
        got, got_x0 = ops.ddim_step(x, m, a_t, a_prev, return_x0=True, **kwargs)
        exact, exact_x0 = ops.ddim_step_ref(
            x.double(), m.double(), a_t, a_prev, return_x0=True, **{**kwargs, "noise": z.double()}
        )
        scale = _scale(x, m, z, alpha=min(a_t, 1 - a_t) if prediction_type == "sample" else a_t)
        _assert_matches(got_x0, want.pred_original_sample, exact_x0, scale)
        _assert_matches(got, want.prev_sample, exact, scale)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
def test_matches_ddim_inverse_scheduler_step(gen, prediction_type, clip_sample):
    # set_alpha_to_one=False: with ᾱ = 1 at the first step, x̂0-prediction has no defined ε̂ (diffusers divides by 0).
    scheduler = diffusers.DDIMInverseScheduler(
        prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=1.0, set_alpha_to_one=False
    )
    scheduler.set_timesteps(NUM_STEPS)
    T = scheduler.config.num_train_timesteps
    for t in scheduler.timesteps[[0, 5, NUM_STEPS - 1]].tolist():
        x, m = rand(gen, 2, 4, 9, 14), rand(gen, 2, 4, 9, 14)
        cur = min(t - T // NUM_STEPS, T - 1)
        a_t = float(scheduler.alphas_cumprod[cur]) if cur >= 0 else float(scheduler.initial_alpha_cumprod)
        a_next = float(scheduler.alphas_cumprod[t])
        want = scheduler.step(m, t, x)
        got, got_x0 = ops.ddim_invert_step(
            x, m, a_t, a_next, prediction_type=prediction_type, clip_sample_range=1.0 if clip_sample else None,
            return_x0=True,
        )
        exact, exact_x0 = ops.ddim_invert_step_ref(
            x.double(), m.double(), a_t, a_next, prediction_type=prediction_type,
            clip_sample_range=1.0 if clip_sample else None, return_x0=True,
        )
        scale = _scale(x, m, alpha=min(a_t, 1 - a_t))
        _assert_matches(got_x0, want.pred_original_sample, exact_x0, scale)
        _assert_matches(got, want.prev_sample, exact, scale)


@pytest.mark.parametrize("guidance_rescale", [0.0, 0.7])
def test_fused_guidance_matches_diffusers_cfg_then_step(gen, guidance_rescale):
    """A Stable-Diffusion pipeline's chunk → CFG → rescale_noise_cfg → scheduler.step, in one call."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False)
    scheduler.set_timesteps(NUM_STEPS)
    t = scheduler.timesteps[3].item()
    x, out = rand(gen, 2, 4, 16, 16), rand(gen, 4, 4, 16, 16)
    uncond, cond = out.chunk(2)
    guided = uncond + 7.5 * (cond - uncond)
    if guidance_rescale:
        guided = rescale_noise_cfg(guided, cond, guidance_rescale=guidance_rescale)
    want = scheduler.step(guided, t, x).prev_sample
    a_t, a_prev = _alphas(scheduler, t)
    got = ops.ddim_step(x, out, a_t, a_prev, prediction_type="v_prediction", guidance_scale=7.5,
                        guidance_rescale=guidance_rescale)
    assert_close_to_ref(got, want, dtype=torch.float32, scale=_scale(x, 16 * out, alpha=a_t))


@pytest.mark.parametrize("sample_max_value", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_thresholding_with_any_sample_max_value_matches_diffusers(gen, sample_max_value, prediction_type):
    """diffusers' own thresholding test uses sample_max_value 0.5, 1 and 2: s = clamp(quantile, 1, max) is
    `max` when max < 1 (torch.clamp with min > max gives max), so x̂0 is clamped to ±max and divided by it."""
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=False, thresholding=True,
        dynamic_thresholding_ratio=0.995, sample_max_value=sample_max_value, set_alpha_to_one=False, steps_offset=1,
    )
    scheduler.set_timesteps(NUM_STEPS)
    for t in scheduler.timesteps[[0, 12, NUM_STEPS - 1]].tolist():
        x, m = rand(gen, 2, 4, 12, 10, scale=2.0), rand(gen, 2, 4, 12, 10, scale=2.0)
        a_t, a_prev = _alphas(scheduler, t)
        want = scheduler.step(m, t, x)
        kwargs = dict(prediction_type=prediction_type, dynamic_threshold=0.995, dynamic_threshold_max=sample_max_value)
        got, got_x0 = ops.ddim_step(x, m, a_t, a_prev, return_x0=True, **kwargs)
        exact, exact_x0 = ops.ddim_step_ref(x.double(), m.double(), a_t, a_prev, return_x0=True, **kwargs)
        scale = _scale(x, m, alpha=min(a_t, 1 - a_t) if prediction_type == "sample" else a_t)
        _assert_matches(got_x0, want.pred_original_sample, exact_x0, scale)
        _assert_matches(got, want.prev_sample, exact, scale)
