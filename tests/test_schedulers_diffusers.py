"""diffrt's drop-in schedulers (diffrt.integrations.schedulers) against diffusers' schedulers of the same
name: every step of a full sampling loop over each configuration grid, with the same model outputs and
samples fed to both (so each step is compared on identical inputs, and both keep their multistep state
from identical inputs), and whole StableDiffusion / Img2Img pipelines with the scheduler swapped in."""

import itertools

import pytest
import torch

from diffrt.integrations import diffusers as bridge
from diffrt.integrations import schedulers as ours
from tests._helpers import assert_close_to_ref

diffusers = pytest.importorskip("diffusers")

# diffusers' own set_timesteps passes torch tensors through numpy (a DeprecationWarning under numpy 2)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SPACINGS = ("leading", "trailing", "linspace")
BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2")
SHAPE = (2, 4, 8, 8)


def fake_model(x: torch.Tensor, t, prediction_type: str) -> torch.Tensor:
    """A fixed, smooth function of the model input and the timestep, of the size a trained model's output has."""
    tf = float(t) / 1000.0
    out = 0.6 * torch.tanh(x * (0.5 + tf)) + 0.3 * torch.sin(3.0 * x + 7.0 * tf)
    return out if prediction_type != "sample" else out * 0.8


def run_both(name: str, config: dict, steps: int, *, step_kwargs=None, seed=0, ancestral=False):
    """Steps diffusers' and diffrt's scheduler side by side along diffusers' trajectory; returns the pairs
    (theirs, ours) of every prev_sample (and pred_original_sample where both give it) and the σ / scale."""
    theirs = getattr(diffusers, name)(**config)
    mine = getattr(ours, name).from_config(theirs.config)
    theirs.set_timesteps(steps)
    mine.set_timesteps(steps)
    assert torch.equal(theirs.timesteps, mine.timesteps)
    assert mine.init_noise_sigma == theirs.init_noise_sigma and mine.order == theirs.order
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * theirs.init_noise_sigma
    g_theirs, g_ours = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    pairs = []
    prediction_type = config.get("prediction_type", "epsilon")
    for t in theirs.timesteps:
        x_in = theirs.scale_model_input(x, t)
        assert torch.equal(mine.scale_model_input(x, t), x_in)
        m = fake_model(x_in, t, prediction_type)
        kw = dict(step_kwargs or {})
        if ancestral or kw.get("eta", 0) > 0:
            a = theirs.step(m, t, x, generator=g_theirs, **kw)
            b = mine.step(m, t, x, generator=g_ours, **kw)
        else:
            a = theirs.step(m, t, x, **kw)
            b = mine.step(m, t, x, **kw)
        scale = x.abs().max().item() + m.abs().max().item() * (1 + float(theirs.init_noise_sigma))
        pairs.append((a, b, scale))
        x = a.prev_sample
    return pairs


def assert_steps_match(pairs, *, slack_factor=1.0):
    for i, (a, b, scale) in enumerate(pairs):
        # intermediate terms are as large as the inputs and the outputs (x̂0 = x/√ᾱ near ᾱ = 0)
        x0 = getattr(a, "pred_original_sample", None)
        scale += a.prev_sample.abs().max().item() + (x0.abs().max().item() if x0 is not None else 0.0)
        assert type(b).__name__ == type(a).__name__
        assert b.prev_sample.dtype == a.prev_sample.dtype and b.prev_sample.shape == a.prev_sample.shape
        try:
            # diffusers computes in float32: its error and ours both count (2 × float32 tolerance)
            assert_close_to_ref(b.prev_sample, a.prev_sample, dtype=torch.float32, scale=scale * slack_factor,
                                slack=64 * torch.finfo(torch.float32).eps * scale * slack_factor)
            if getattr(a, "pred_original_sample", None) is not None:
                assert_close_to_ref(b.pred_original_sample, a.pred_original_sample, dtype=torch.float32,
                                    scale=scale * slack_factor)
        except AssertionError as e:
            raise AssertionError(f"step {i} of {len(pairs)}: {e}") from None


# ---- DDIM ------------------------------------------------------------------------------------------

DDIM_GRID = [
    dict(prediction_type=p, timestep_spacing=s, beta_schedule=b, set_alpha_to_one=a, clip_sample=False)
    for p, s, b, a in itertools.product(("epsilon", "v_prediction", "sample"), SPACINGS, BETAS, (True, False))
]


@pytest.mark.parametrize("config", DDIM_GRID, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_ddim_matches_diffusers(config):
    assert_steps_match(run_both("DDIMScheduler", config, 10))


@pytest.mark.parametrize("options", [
    dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False),
    dict(prediction_type="sample", rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False),
    dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, clip_sample=False),
    dict(prediction_type="sample", thresholding=True, clip_sample=False),
    dict(clip_sample=True, clip_sample_range=0.5),
], ids=["zero-snr-v", "zero-snr-sample", "threshold", "threshold-sample", "clip"])
@pytest.mark.parametrize("step_kwargs", [{}, dict(eta=1.0), dict(eta=0.5, use_clipped_model_output=True)],
                         ids=["eta0", "eta1", "eta.5-clipped"])
def test_ddim_options_match_diffusers(options, step_kwargs):
    config = dict(beta_schedule="scaled_linear", **options)
    assert_steps_match(run_both("DDIMScheduler", config, 12, step_kwargs=step_kwargs))


def test_ddim_fused_guidance_matches_combine_then_step():
    """A custom loop hands DDIMScheduler.step the batched [uncond; cond] output and the guidance scale:
    the same x_prev as diffusers' combine-then-step."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    theirs = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False)
    mine = ours.DDIMScheduler.from_config(theirs.config)
    theirs.set_timesteps(10)
    mine.set_timesteps(10)
    g = torch.Generator().manual_seed(4)
    x, both = torch.randn(SHAPE, generator=g), torch.randn(2 * SHAPE[0], *SHAPE[1:], generator=g)
    t = theirs.timesteps[3]
    uncond, cond = both.chunk(2)
    guided = rescale_noise_cfg(uncond + 7.5 * (cond - uncond), cond, guidance_rescale=0.7)
    a = theirs.step(guided, t, x).prev_sample
    b = mine.step(both, t, x, guidance_scale=7.5, guidance_rescale=0.7).prev_sample
    assert_close_to_ref(b, a, dtype=torch.float32, scale=40.0)


# ---- DPM-Solver++ (2M) -----------------------------------------------------------------------------

DPM_GRID = [
    dict(prediction_type=p, timestep_spacing=s, beta_schedule=b)
    for p, s, b in itertools.product(("epsilon", "v_prediction", "sample"), SPACINGS, BETAS)
]


@pytest.mark.parametrize("config", DPM_GRID, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("steps", [10, 20])  # lower_order_final applies below 15 steps
def test_dpm_solver_matches_diffusers(config, steps):
    assert_steps_match(run_both("DPMSolverMultistepScheduler", config, steps), slack_factor=4.0)


@pytest.mark.parametrize("options", [
    dict(use_karras_sigmas=True),
    dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
    dict(final_sigmas_type="sigma_min", lower_order_final=False),
    dict(lower_order_final=False),
    # the last step's order shows only where the final σ is not 0 and not the last σ itself (trailing)
    dict(final_sigmas_type="sigma_min", timestep_spacing="trailing"),
    dict(final_sigmas_type="sigma_min", timestep_spacing="trailing", lower_order_final=False),
    dict(euler_at_final=True, final_sigmas_type="sigma_min", timestep_spacing="trailing", lower_order_final=False),
    dict(solver_type="heun"),
    dict(solver_order=1),
    dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
    dict(thresholding=True, prediction_type="v_prediction", use_karras_sigmas=True),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(use_exponential_sigmas=True),
    dict(use_lu_lambdas=True),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("steps", [8, 16])
def test_dpm_solver_options_match_diffusers(options, steps):
    config = dict(beta_schedule="scaled_linear", **options)
    assert_steps_match(run_both("DPMSolverMultistepScheduler", config, steps), slack_factor=4.0)


# ---- Euler and Euler ancestral -------------------------------------------------------------------

EULER_GRID = [
    dict(prediction_type=p, timestep_spacing=s, beta_schedule=b)
    for p, s, b in itertools.product(("epsilon", "v_prediction", "sample"), SPACINGS, BETAS)
]


@pytest.mark.parametrize("config", EULER_GRID, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_euler_matches_diffusers(config):
    assert_steps_match(run_both("EulerDiscreteScheduler", config, 10))


@pytest.mark.parametrize("options", [
    dict(use_karras_sigmas=True),
    dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
    dict(final_sigmas_type="sigma_min"),
    dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(timestep_type="continuous", prediction_type="v_prediction"),
    dict(interpolation_type="log_linear"),
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_euler_options_match_diffusers(options):
    config = dict(beta_schedule="scaled_linear", **options)
    assert_steps_match(run_both("EulerDiscreteScheduler", config, 12))


@pytest.mark.parametrize("config", [
    dict(prediction_type=p, timestep_spacing=s, beta_schedule=b)
    for p, s, b in itertools.product(("epsilon", "v_prediction"), SPACINGS, BETAS)
] + [dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")],
    ids=lambda c: "-".join(str(v) for v in c.values()))
def test_euler_ancestral_matches_diffusers_with_the_same_generator(config):
    """The noise z is drawn as diffusers draws it: the same seed gives the same steps."""
    assert_steps_match(run_both("EulerAncestralDiscreteScheduler", config, 10, ancestral=True))


def test_euler_ancestral_takes_noise_instead_of_a_generator():
    theirs = diffusers.EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear")
    mine = ours.EulerAncestralDiscreteScheduler.from_config(theirs.config)
    theirs.set_timesteps(5)
    mine.set_timesteps(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * theirs.init_noise_sigma
    t = theirs.timesteps[0]
    m = fake_model(theirs.scale_model_input(x, t), t, "epsilon")
    mine.scale_model_input(x, t)
    a = theirs.step(m, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    b = mine.step(m, t, x, noise=z).prev_sample
    assert_close_to_ref(b, a, dtype=torch.float32, scale=40.0)


# ---- the diffusers face ----------------------------------------------------------------------------


def test_from_config_takes_another_schedulers_config_like_diffusers():
    ddim = diffusers.DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    for name in ("DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
                 "EulerAncestralDiscreteScheduler"):
        theirs = getattr(diffusers, name).from_config(ddim.config)
        mine = getattr(bridge, name).from_config(ddim.config)
        assert dict(mine.config) == dict(theirs.config)
        assert sorted(mine.compatibles, key=str) == sorted(theirs.compatibles, key=str)
        mine.set_timesteps(7, device="cpu")
        theirs.set_timesteps(7, device="cpu")
        assert torch.equal(mine.timesteps, theirs.timesteps)
        assert len(mine) == len(theirs)


def test_unsupported_options_are_refused():
    with pytest.raises(NotImplementedError, match="algorithm_type='sde-dpmsolver\\+\\+'"):
        ours.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.raises(NotImplementedError, match="solver_order=3"):
        ours.DPMSolverMultistepScheduler(solver_order=3)
    with pytest.raises(NotImplementedError, match="flow_prediction"):
        ours.DPMSolverMultistepScheduler(prediction_type="flow_prediction")
    with pytest.raises(NotImplementedError, match="sample"):
        ours.EulerAncestralDiscreteScheduler(prediction_type="sample")
    s = ours.EulerDiscreteScheduler()
    s.set_timesteps(4)
    t = s.timesteps[0]
    with pytest.raises(NotImplementedError, match="s_churn"):
        s.step(torch.zeros(SHAPE), t, torch.zeros(SHAPE), s_churn=1.0)
    with pytest.raises(ValueError, match="not an integer index"):
        s.step(torch.zeros(SHAPE), 3, torch.zeros(SHAPE))


def test_bfloat16_steps_match_diffusers_to_bfloat16_tolerance():
    for name in ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler"):
        theirs = getattr(diffusers, name)(beta_schedule="scaled_linear")
        mine = getattr(ours, name).from_config(theirs.config)
        theirs.set_timesteps(6)
        mine.set_timesteps(6)
        x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) * theirs.init_noise_sigma).bfloat16()
        for t in theirs.timesteps:
            m = fake_model(theirs.scale_model_input(x, t), t, "epsilon").bfloat16()
            mine.scale_model_input(x, t)
            a, b = theirs.step(m, t, x).prev_sample, mine.step(m, t, x).prev_sample
            assert b.dtype == a.dtype == torch.bfloat16
            # diffusers rounds x̂0 to bfloat16 on the way (DPM-Solver), diffrt keeps it in float32
            assert_close_to_ref(b, a.float(), dtype=torch.bfloat16, scale=0.0,
                                slack=4 * torch.finfo(torch.bfloat16).eps * (x.abs().max().item() + 1))
            x = a


# ---- whole pipelines ---------------------------------------------------------------------------------


def _tiny_components():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=8, layers_per_block=1).eval()
    scheduler = diffusers.PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1)
    return dict(unet=unet, vae=vae, scheduler=scheduler, text_encoder=None, tokenizer=None, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("kind", ["text2img", "img2img", "inpaint"])
@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler"])
def test_stable_diffusion_pipeline_gives_the_same_images(kind, name):
    pytest.importorskip("transformers")  # diffusers' StableDiffusion pipeline modules import it
    pipeline_class = {"text2img": diffusers.StableDiffusionPipeline, "img2img": diffusers.StableDiffusionImg2ImgPipeline,
                      "inpaint": diffusers.StableDiffusionInpaintPipeline}[kind]
    pipe = pipeline_class(**_tiny_components())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(5)
    embeds, negative = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=6, guidance_scale=5.0,
                  output_type="np")
    if kind == "text2img":
        kwargs.update(height=32, width=32)
    else:  # img2img: set_begin_index, add_noise; inpaint (a 4-channel UNet): add_noise at every step
        kwargs.update(image=torch.rand(1, 3, 32, 32, generator=g) * 2 - 1, strength=0.6)
    if kind == "inpaint":
        kwargs.update(mask_image=(torch.rand(1, 1, 32, 32, generator=g) > 0.5).float(), height=32, width=32)
    images = {}
    for which in ("diffusers", "diffrt"):
        module = diffusers if which == "diffusers" else bridge
        pipe.scheduler = getattr(module, name).from_config(pipe.scheduler.config)
        with torch.no_grad():
            images[which] = pipe(generator=torch.Generator().manual_seed(11), **kwargs).images
    assert images["diffrt"].shape == images["diffusers"].shape
    assert abs(images["diffrt"] - images["diffusers"]).max() < 1e-4
