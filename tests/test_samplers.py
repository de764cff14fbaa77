"""ddim_sample / ddim_invert: diffusers' DDIM loop reproduced, inversion round trips, guidance."""

import pytest
import torch

import diffrt
from diffrt import FunctionDenoiser, NoiseSchedule, OscillatingGuidance, SamplingSchedule, ddim_invert, ddim_sample

diffusers = pytest.importorskip("diffusers")


def toy_model(x, t, cond):
    """A smooth, deterministic ε-model that depends on x, t and a (B, 8) condition."""
    phase = (t.double() / 1000).view(-1, 1, 1, 1).to(x.dtype)
    return 0.6 * x * torch.cos(phase) + 0.3 * torch.sin(3 * phase) + 0.2 * cond[:, :4, None, None].to(x.dtype)


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_sample_matches_diffusers_loop(spacing, offset, eta, prediction_type):
    torch.manual_seed(0)
    steps, w = 20, 6.0
    x_T = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(2, 8), torch.zeros(2, 8)
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing=spacing, steps_offset=offset,
                                    clip_sample=False, set_alpha_to_one=False, prediction_type=prediction_type)
    sched.set_timesteps(steps)
    x, gen = x_T.clone(), torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        out = toy_model(torch.cat([x, x]), t.repeat(4), torch.cat([uncond, cond]))
        u, c = out.chunk(2)
        x = sched.step(u + w * (c - u), t, x, eta=eta, generator=gen).prev_sample
    # diffrt with the same ᾱ table, so the comparison isolates the sampler (the tables agree to 2e-5).
    noise = NoiseSchedule(sched.alphas_cumprod.double())
    schedule = SamplingSchedule.ddim(noise, steps, spacing=spacing, steps_offset=offset, set_alpha_to_one=False)
    model = FunctionDenoiser(toy_model, prediction_type=prediction_type)
    ours = ddim_sample(model, x_T, schedule, cond=cond, uncond=uncond, guidance=w, eta=eta,
                       generator=torch.Generator().manual_seed(7), progress=False)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def gaussian_data_model(scale):
    """The exact ε-prediction for data x0 ~ N(0, scale²·I): E[ε | x_t] = √(1−ᾱ)·x_t / (ᾱ·scale² + 1 − ᾱ)."""
    ab = NoiseSchedule.make().alphas_cumprod

    def fn(x, t, cond):
        a = ab[t].view(-1, 1, 1, 1).to(x.dtype)
        return (1 - a).sqrt() * x / (a * scale**2 + 1 - a)

    return FunctionDenoiser(fn)


def test_inversion_then_sampling_reconstructs_x0():
    """η = 0 inversion then sampling returns x_0 up to the ODE discretisation error, which falls
    like 1/N (first order: each step evaluates ε at one end of the interval)."""
    model = gaussian_data_model(0.5)
    x0 = 0.5 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = {}
    for n in (50, 200):
        schedule = SamplingSchedule.ddim(NoiseSchedule.make(), n, spacing="trailing")
        latents = ddim_invert(model, x0, schedule, progress=False)
        assert len(latents) == n + 1 and latents[0] is x0
        back = ddim_sample(model, latents[-1], schedule, progress=False)
        errors[n] = ((back - x0).abs().max() / x0.abs().max()).item()
    assert errors[50] < 0.06 and errors[200] < 0.015 and errors[200] < errors[50] / 3, errors
    # Partial encoding (DiffEdit's ratio r): invert and decode only the last 40% of the steps.
    part = SamplingSchedule.ddim(NoiseSchedule.make(), 200, spacing="trailing").tail(0.4)
    enc = ddim_invert(model, x0, part, progress=False)
    assert len(enc) == 81
    assert (ddim_sample(model, enc[-1], part, progress=False) - x0).abs().max() < 0.015 * x0.abs().max()


def test_guidance_is_one_batched_call_and_w1_steps_skip_uncond():
    calls = []

    def fn(x, t, cond):
        calls.append((x.shape[0], cond.shape[0]))
        return 0.1 * x

    model = FunctionDenoiser(fn)
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 6)
    guidance = OscillatingGuidance(high=30.0, low=1.0, num_oscillating_steps=4, hold=5.0)
    ddim_sample(model, torch.randn(3, 4, 8, 8), schedule, cond=torch.ones(3, 8), uncond=torch.zeros(3, 8),
                guidance=guidance, progress=False)
    # steps 0..5 have w = 30, 1, 30, 1, 5, 5; w = 1 runs only the conditional half
    assert calls == [(6, 6), (3, 3), (6, 6), (3, 3), (6, 6), (6, 6)]


def test_oscillating_guidance_values():
    g = OscillatingGuidance()  # 30, 1, 30, 1 … over the whole schedule
    assert [g(i, 6) for i in range(6)] == [30.0, 1.0, 30.0, 1.0, 30.0, 1.0]
    g = OscillatingGuidance(high=12.0, low=2.0, num_oscillating_steps=3)
    assert [g(i, 5) for i in range(5)] == [12.0, 2.0, 12.0, 2.0, 2.0]


def test_dict_conditions_are_batched_and_callback_sees_every_step():
    seen = []

    def fn(x, t, cond):
        assert set(cond) == {"context", "mask"} and cond["context"].shape[0] == x.shape[0]
        return 0.1 * x

    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 5)
    cond = {"context": torch.ones(2, 3, 8), "mask": torch.ones(2, 3, dtype=torch.bool)}
    uncond = {"context": torch.zeros(2, 3, 8), "mask": torch.ones(2, 3, dtype=torch.bool)}
    ddim_sample(FunctionDenoiser(fn), torch.randn(2, 4, 8, 8), schedule, cond=cond, uncond=uncond, guidance=4.0,
                callback=seen.append, progress=False)
    assert [s["i"] for s in seen] == list(range(5)) and seen[-1]["x0"].shape == (2, 4, 8, 8)


def test_sampling_is_reproducible_with_a_generator():
    model = gaussian_data_model(1.0)
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 10)
    x = torch.randn(1, 4, 8, 8)
    a = ddim_sample(model, x, schedule, eta=1.0, generator=torch.Generator().manual_seed(1), progress=False)
    b = ddim_sample(model, x, schedule, eta=1.0, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(a, b)


def test_bad_inputs():
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 5)
    with pytest.raises(TypeError, match="Denoiser"):
        ddim_sample(lambda x, t, c: x, torch.randn(1, 4, 8, 8), schedule, progress=False)
    with pytest.raises(TypeError, match="schedule"):
        ddim_sample(gaussian_data_model(1.0), torch.randn(1, 4, 8, 8), [999, 500], progress=False)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(gaussian_data_model(1.0), torch.randn(1, 4, 8, 8), schedule, eta=-1.0, progress=False)
    with pytest.raises(ValueError, match="prediction_type"):
        FunctionDenoiser(lambda x, t, c: x, prediction_type="score")
    assert isinstance(gaussian_data_model(1.0), diffrt.Denoiser)


def _toy64(calls=None):
    def fn(x, t, cond):
        if calls is not None:
            calls.append(x.shape[0])
        return toy_model(x, t, cond)

    return FunctionDenoiser(fn)


def test_per_sample_guidance_equals_each_sample_guided_alone():
    """A 1-D weight tensor guides each sample with its own w (w = 1: the conditional output alone);
    float64 throughout, so batching changes nothing but rounding."""
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    cond, uncond = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64)
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 5)
    alone = torch.cat([
        ddim_sample(_toy64(), x_T[:1], schedule, cond=cond[:1], uncond=uncond[:1], guidance=1.0, progress=False),
        ddim_sample(_toy64(), x_T[1:], schedule, cond=cond[1:], uncond=uncond[1:], guidance=7.5, progress=False),
    ])
    weights = torch.tensor([1.0, 7.5])
    for guidance in (lambda i, n: weights, weights):
        calls = []
        got = ddim_sample(_toy64(calls), x_T, schedule, cond=cond, uncond=uncond, guidance=guidance, progress=False)
        torch.testing.assert_close(got, alone, rtol=1e-12, atol=1e-12)
        assert calls == [4] * 5  # one weight is not 1: every step runs [uncond; cond]
    calls = []
    ones = ddim_sample(_toy64(calls), x_T, schedule, cond=cond, uncond=uncond, guidance=torch.ones(2), progress=False)
    assert calls == [2] * 5  # all weights 1: the conditional half only
    torch.testing.assert_close(ones, ddim_sample(_toy64(), x_T, schedule, cond=cond, progress=False), rtol=0, atol=0)
    # inversion takes per-sample weights too: sample 1 inverted alone at w = 7.5
    lat = ddim_invert(_toy64(), x_T, schedule, cond=cond, uncond=uncond, guidance=weights, progress=False)[-1]
    lat1 = ddim_invert(_toy64(), x_T[1:], schedule, cond=cond[1:], uncond=uncond[1:], guidance=7.5, progress=False)[-1]
    torch.testing.assert_close(lat[1:], lat1, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="guidance at step 0 .* 1 or 2 per-sample weights"):
        ddim_sample(_toy64(), x_T, schedule, cond=cond, uncond=uncond, guidance=torch.ones(3), progress=False)


def test_guidance_without_uncond_raises():
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 4)
    x, cond = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    for sampler in (ddim_sample, ddim_invert):
        with pytest.raises(ValueError, match="guidance needs uncond"):
            sampler(_toy64(), x, schedule, cond=cond, guidance=7.5, progress=False)
        with pytest.raises(ValueError, match="guidance needs uncond"):
            sampler(_toy64(), x, schedule, cond=cond, guidance=OscillatingGuidance(high=5.0, low=1.0), progress=False)
    with pytest.raises(ValueError, match="guidance_rescale=0.7 needs guidance"):
        ddim_sample(_toy64(), x, schedule, cond=cond, uncond=torch.zeros_like(cond), guidance_rescale=0.7, progress=False)
    # w = 1 at every step is the conditional output itself: nothing is dropped, so no uncond is needed
    torch.testing.assert_close(ddim_sample(_toy64(), x, schedule, cond=cond, guidance=1.0, progress=False),
                               ddim_sample(_toy64(), x, schedule, cond=cond, progress=False), rtol=0, atol=0)


def _reference_loop(model, x, schedule, cond, invert=False, **kwargs):
    """float64 loop over the ops' torch references."""
    if invert:
        for t, a_t, a_prev in list(schedule)[::-1]:
            out = model(x, torch.full((x.shape[0],), t), cond)
            x = diffrt.ops.ddim_invert_step_ref(x, out, a_prev, a_t, **kwargs)
        return x
    for t, a_t, a_prev in schedule:
        x = diffrt.ops.ddim_step_ref(x, model(x, torch.full((x.shape[0],), t), cond), a_t, a_prev, **kwargs)
    return x


def test_dynamic_threshold_max_and_inversion_clip_range():
    g = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)  # |x̂0| well above 2.5 at the first steps
    cond = torch.randn(2, 8, generator=g, dtype=torch.float64)
    schedule = SamplingSchedule.ddim(NoiseSchedule.make(), 6, spacing="trailing")
    model = _toy64()
    got = ddim_sample(model, x, schedule, cond=cond, dynamic_threshold=0.9, dynamic_threshold_max=2.5, progress=False)
    want = _reference_loop(model, x, schedule, cond, dynamic_threshold=0.9, dynamic_threshold_max=2.5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    unbounded = ddim_sample(model, x, schedule, cond=cond, dynamic_threshold=0.9, progress=False)
    assert (unbounded - got).abs().max() > 1e-3  # the bound changed the result
    inv = ddim_invert(model, x, schedule, cond=cond, clip_sample_range=0.5, progress=False)[-1]
    torch.testing.assert_close(inv, _reference_loop(model, x, schedule, cond, invert=True, clip_sample_range=0.5),
                               rtol=1e-12, atol=1e-12)
    assert (ddim_invert(model, x, schedule, cond=cond, progress=False)[-1] - inv).abs().max() > 1e-3


def test_schedule_settings_are_the_samplers_defaults():
    from dataclasses import replace

    g = torch.Generator().manual_seed(6)
    x, cond = 3 * torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    plain = SamplingSchedule.ddim(NoiseSchedule.make(), 5)
    clipped = replace(plain, prediction_type="epsilon", clip_sample_range=1.0)
    assert clipped.tail(0.5).clip_sample_range == 1.0  # tail keeps the settings
    torch.testing.assert_close(ddim_sample(_toy64(), x, clipped, cond=cond, progress=False),
                               ddim_sample(_toy64(), x, plain, cond=cond, clip_sample_range=1.0, progress=False))
    torch.testing.assert_close(ddim_invert(_toy64(), x, clipped, cond=cond, progress=False)[-1],
                               ddim_invert(_toy64(), x, plain, cond=cond, clip_sample_range=1.0, progress=False)[-1])
    with pytest.raises(ValueError, match="clip_sample_range=2.0 conflicts with the schedule's clip_sample_range=1.0"):
        ddim_sample(_toy64(), x, clipped, cond=cond, clip_sample_range=2.0, progress=False)
    with pytest.raises(ValueError, match="exclude each other"):
        ddim_sample(_toy64(), x, clipped, cond=cond, dynamic_threshold=0.99, progress=False)
    with pytest.raises(ValueError, match="predicts 'epsilon' but the schedule is configured for prediction_type='v_pred"):
        ddim_sample(_toy64(), x, replace(plain, prediction_type="v_prediction"), cond=cond, progress=False)
    with pytest.raises(ValueError, match="no dynamic thresholding"):
        ddim_invert(_toy64(), x, replace(plain, dynamic_threshold=0.99), cond=cond, progress=False)
