"""Noise schedules and timestep sequences: closed forms, diffusers where diffusers is right, and
linspace/trailing stepping to the next timestep of their own sequence."""

import math
import re

import numpy as np
import pytest
import torch

from tests._helpers import SHIPPED_CONFIGS, assert_close_to_ref

from diffrt.schedules import NoiseSchedule, SamplingSchedule, make_betas, rescale_zero_terminal_snr

diffusers = pytest.importorskip("diffusers")


def test_betas_closed_forms():
    lin = make_betas("linear", 1000, 1e-4, 0.02)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    assert torch.allclose(lin.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    sl = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert torch.allclose(sl.sqrt().diff(), torch.full((999,), (0.012**0.5 - 0.00085**0.5) / 999, dtype=torch.float64))
    # cosine: ᾱ_t = f(t+1)/f(0) with f(t) = cos²((t/T + s)/(1 + s)·π/2), wherever β is not capped
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = NoiseSchedule.make("squaredcos_cap_v2").alphas_cumprod
    for t in (0, 10, 500, 900):
        assert ab[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alphas_match_diffusers(kind, zero_snr):
    ours = NoiseSchedule.make(kind, beta_start=0.0001, beta_end=0.02, zero_terminal_snr=zero_snr).alphas_cumprod
    theirs = diffusers.DDIMScheduler(beta_schedule=kind, beta_start=0.0001, beta_end=0.02,
                                     rescale_betas_zero_snr=zero_snr).alphas_cumprod.double()
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-7)  # diffusers accumulates in float32


def test_zero_terminal_snr():
    betas = make_betas("scaled_linear")
    ab = torch.cumprod(1 - betas, 0)
    ab0 = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    assert ab0[-1].item() == 0.0
    assert ab0[0].item() == pytest.approx(ab[0].item(), rel=1e-12)
    assert (ab0.diff() <= 0).all()


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("num_steps", [1, 7, 20, 30, 50, 1000])
def test_timesteps_match_diffusers(spacing, offset, num_steps):
    s = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(num_steps)
    if s.timesteps.max() >= 1000:  # diffusers would index past its ᾱ table at the first step; diffrt says so
        with pytest.raises(ValueError, match="outside"):
            NoiseSchedule.make().timesteps(num_steps, spacing, offset)
        return
    assert NoiseSchedule.make().timesteps(num_steps, spacing, offset) == s.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [7, 30, 50])
def test_every_step_lands_on_the_next_timestep_of_its_sequence(spacing, num_steps):
    noise = NoiseSchedule.make()
    sched = SamplingSchedule.ddim(noise, num_steps, spacing=spacing, set_alpha_to_one=False)
    ts = sched.timesteps
    for i in range(len(ts) - 1):
        assert sched.alphas_prev[i] == noise.alphas_cumprod[ts[i + 1]].item()
    assert sched.alphas_prev[-1] == noise.alphas_cumprod[0].item()  # set_alpha_to_one=False
    assert SamplingSchedule.ddim(noise, num_steps, spacing=spacing).alphas_prev[-1] == 1.0


def test_diffusers_linspace_prev_timestep_is_off_its_sequence():
    """The difference diffrt fixes: DDIMScheduler steps linspace by T//N, landing between timesteps."""
    s = diffusers.DDIMScheduler(timestep_spacing="linspace")
    s.set_timesteps(30)
    ts = s.timesteps.tolist()
    diffusers_prev = [t - 1000 // 30 for t in ts[:-1]]
    assert diffusers_prev != ts[1:]
    assert list(SamplingSchedule.ddim(NoiseSchedule.make(), 30, spacing="linspace").timesteps) == ts


def test_tail_keeps_the_least_noisy_steps():
    sched = SamplingSchedule.ddim(NoiseSchedule.make(), 50, spacing="trailing")
    tail = sched.tail(0.4)
    assert len(tail) == 20 and tail.timesteps == sched.timesteps[-20:] and tail.alphas_prev[-1] == 1.0
    assert len(sched.tail(1.0)) == 50 and len(sched.tail(0.001)) == 1
    with pytest.raises(ValueError, match="strength"):
        sched.tail(0.0)


@pytest.mark.parametrize("bad", [dict(kind="cosine"), dict(num_train_timesteps=0)])
def test_bad_schedule_arguments(bad):
    with pytest.raises(ValueError):
        NoiseSchedule.make(**bad)


def test_bad_timestep_arguments():
    noise = NoiseSchedule.make()
    with pytest.raises(ValueError, match="num_steps"):
        noise.timesteps(0)
    with pytest.raises(ValueError, match="spacing"):
        noise.timesteps(10, "uniform")
    with pytest.raises(ValueError, match="steps_offset"):
        noise.timesteps(10, "leading", steps_offset=200)


def test_add_noise_and_velocity():
    noise = NoiseSchedule.make()
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    a = noise.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(noise.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    v = noise.velocity(x0, eps, t)
    xt = noise.add_noise(x0, eps, t)
    torch.testing.assert_close(a.sqrt() * xt - (1 - a).sqrt() * v, x0)  # x0 recovered from v


def test_linspace_numpy_rounding_matches():
    assert NoiseSchedule.make().timesteps(3, "linspace") == [int(v) for v in np.linspace(0, 999, 3).round()][::-1]


@pytest.mark.parametrize("num_steps", [7, 10, 50])
@pytest.mark.parametrize("strength", [0.05, 0.29, 0.3, 0.55, 0.7, 1.0])
def test_tail_floor_rounding_is_diffusers_get_timesteps(num_steps, strength):
    """rounding="floor" keeps the steps diffusers' img2img / DiffEdit get_timesteps keeps (int(s·N))."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionImg2ImgPipeline

    s = diffusers.DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(num_steps)
    theirs, k = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=s), num_steps, strength, "cpu")
    sched = SamplingSchedule.ddim(NoiseSchedule.make(), num_steps, spacing="trailing")
    if k == 0:
        with pytest.raises(ValueError, match="keeps no step"):
            sched.tail(strength, rounding="floor")
    else:
        assert list(sched.tail(strength, rounding="floor").timesteps) == theirs.tolist()
    assert len(sched.tail(strength)) == max(1, math.ceil(strength * num_steps - 1e-9))  # the default: ceil
    with pytest.raises(ValueError, match="rounding"):
        sched.tail(strength, rounding="round")


def test_tail_rounding_at_ten_steps():
    sched = SamplingSchedule.ddim(NoiseSchedule.make(), 10)
    assert len(sched.tail(0.55)) == 6 and len(sched.tail(0.55, rounding="floor")) == 5


def test_sampling_schedule_validates_its_settings():
    ts, a = (999, 499), (0.01, 0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        SamplingSchedule(ts, a, (0.5, 1.0), prediction_type="eps")
    with pytest.raises(ValueError, match="not both"):
        SamplingSchedule(ts, a, (0.5, 1.0), clip_sample_range=1.0, dynamic_threshold=0.9)
    with pytest.raises(ValueError, match="dynamic_threshold_max needs dynamic_threshold"):
        SamplingSchedule(ts, a, (0.5, 1.0), dynamic_threshold_max=2.0)
    with pytest.raises(ValueError, match="length"):
        SamplingSchedule(ts, a, (1.0,))


def test_from_config_reads_every_schedule_key_with_ddpm_defaults():
    """A diffusion table's schedule: DDPM's linear 1e-4 … 0.02 over 1000 steps where it names no value
    (what the shipped models were trained with); num_train_timesteps is read, not assumed."""
    torch.testing.assert_close(NoiseSchedule.from_config({}).alphas_cumprod,
                               NoiseSchedule.make("linear", 1000, beta_start=1e-4, beta_end=0.02).alphas_cumprod,
                               rtol=0, atol=0)
    table = {"beta_schedule": "scaled_linear", "num_train_timesteps": 500, "beta_start": 0.001, "beta_end": 0.015,
             "zero_terminal_snr": True, "prediction_type": "v_prediction", "caption_dropout": 0.2}
    ours = NoiseSchedule.from_config(table)
    assert ours.num_train_timesteps == 500
    expected = NoiseSchedule.make("scaled_linear", 500, beta_start=0.001, beta_end=0.015, zero_terminal_snr=True)
    torch.testing.assert_close(ours.alphas_cumprod, expected.alphas_cumprod, rtol=0, atol=0)


@pytest.mark.parametrize("table, words", [
    ({"beta_schedul": "linear"}, "unknown diffusion key(s) ['beta_schedul']"),
    ({"num_train_timesteps": 500.0}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": True}, "num_train_timesteps must be an integer"),
    ({"num_train_timesteps": 0}, "num_train_timesteps must be >= 1"),
    ({"beta_end": "0.02"}, "beta_end must be a number"),
    ({"zero_terminal_snr": 1}, "zero_terminal_snr must be true or false"),
    ({"beta_schedule": "cubic"}, "beta schedule must be one of"),
])
def test_from_config_rejects_bad_tables(table, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        NoiseSchedule.from_config(table)


def test_shipped_models_load_the_schedule_they_were_trained_with():
    """Each shipped part's diffusion.json and each training config's [diffusion] give the schedule the
    training used: linear 1e-4 … 0.02 over 1000 steps with zero terminal SNR (UNets), cosine (prior)."""
    import json
    import tomllib

    from diffrt.models.bundle import DEFAULT_DIRECTORY, DIFFUSION_FILE

    trained = {"linear": NoiseSchedule.make("linear", 1000, beta_start=1e-4, beta_end=0.02, zero_terminal_snr=True),
               "squaredcos_cap_v2": NoiseSchedule.make("squaredcos_cap_v2", 1000)}
    tables = [json.loads(f.read_text()) for f in DEFAULT_DIRECTORY.glob(f"*/{DIFFUSION_FILE}")]
    tables += [tomllib.loads(f.read_text())["diffusion"] for f in SHIPPED_CONFIGS
               if f.stem != "clip"]
    assert len(tables) == 4 + 20
    for table in tables:
        torch.testing.assert_close(NoiseSchedule.from_config(table).alphas_cumprod,
                                   trained[table["beta_schedule"]].alphas_cumprod, rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_target_of_each_prediction_type(prediction_type):
    """ε, x0, or v = √ᾱ·ε − √(1−ᾱ)·x0: against float64 from the schedule's ᾱ, in float32."""
    noise = NoiseSchedule.make("linear", 1000, beta_start=1e-4, beta_end=0.02)
    g = torch.Generator().manual_seed(11)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 517, 999])
    a = noise.alphas_cumprod[t].view(-1, 1, 1, 1)
    ref = {"epsilon": eps.double(), "sample": x0.double(),
           "v_prediction": a.sqrt() * eps.double() - (1 - a).sqrt() * x0.double()}[prediction_type]
    out = noise.target(prediction_type, x0, eps, t)
    assert out.dtype == torch.float32
    assert_close_to_ref(out, ref, dtype=torch.float32, scale=max(x0.abs().max().item(), eps.abs().max().item()))


def test_target_rejects_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        NoiseSchedule.make().target("score", torch.zeros(1), torch.zeros(1), torch.tensor([0]))
