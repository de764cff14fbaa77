"""DiffEdit on a toy denoiser whose noise prediction depends on the prompt only inside a known
region: the mask finds that region, decoding keeps the outside exactly, and all is seeded."""

import pytest
import torch

from diffrt import ConstantGuidance, FunctionDenoiser, NoiseSchedule, OscillatingGuidance, ddim_sample
from diffrt.integrations.diffusers_models import LatentPosterior
from diffrt.pipelines import DiffEditPipeline

SIZE = 24
REGION = (slice(6, 14), slice(8, 20))  # rows, cols where the prompt matters
PROMPTS = {"": 0.0, "a cat": 1.0, "a dog": -1.0, "a photo": 0.3}


def region_mask():
    m = torch.zeros(1, 1, SIZE, SIZE)
    m[..., REGION[0], REGION[1]] = 1
    return m


def encode_prompt(prompts):
    return torch.tensor([[PROMPTS[p]] for p in prompts])


def make_pipeline(calls=None, **options):
    inside = region_mask()
    ab = NoiseSchedule.make().alphas_cumprod

    def fn(x, t, cond):
        if calls is not None:
            calls.append(x.shape[0])
        a = ab[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (1 - a).sqrt() * x / (0.25 * a + 1 - a)  # exact ε for data N(0, 0.5²)
        return eps + 0.8 * inside * cond.view(-1, 1, 1, 1).to(x.dtype)

    return DiffEditPipeline(FunctionDenoiser(fn, in_channels=3, out_channels=3), NoiseSchedule.make(), encode_prompt,
                            num_steps=40, **options)


def image(seed=0, b=1):
    return 0.5 * torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def iou(a, b):
    a, b = a.bool(), b.bool()
    return (a & b).sum().item() / max(1, (a | b).sum().item())


def test_mask_finds_the_prompt_dependent_region_in_one_model_call():
    calls = []
    pipe = make_pipeline(calls)
    mask = pipe.generate_mask(image(), "a cat", "a dog", n=8, generator=torch.Generator().manual_seed(0))
    assert calls == [2 * 8]  # n draws × 2 prompts, one batch
    assert mask.shape == (1, 1, SIZE, SIZE)
    assert iou(mask, region_mask()) >= 0.9


def test_mask_options_and_batches():
    pipe = make_pipeline()
    g = torch.Generator().manual_seed(1)
    masks = pipe.generate_mask(image(b=2), ["a cat", "a cat"], ["a dog", "a photo"], n=4, generator=g)
    assert masks.shape == (2, 1, SIZE, SIZE) and iou(masks[1:], region_mask()) >= 0.9
    seeded = lambda **kw: pipe.generate_mask(image(), "a cat", "a dog", n=4,  # noqa: E731
                                             generator=torch.Generator().manual_seed(1), **kw)
    plain, soft = seeded(), seeded(threshold=None)
    assert 0 <= soft.min() and soft.max() <= 1 and torch.equal((soft > 0.5).float(), plain)
    grown, smoothed = seeded(dilate=2), seeded(smooth=1)
    assert grown.sum() > plain.sum() and (grown >= plain).all()
    assert iou(smoothed, region_mask()) >= 0.9


def test_max_normalisation_is_relative_to_the_peak():
    """normalise="max": soft = map / max(map), a float64 recomputation from the same noise; the
    mask keeps what lies within the threshold of the peak, and the region is still found."""
    pipe = make_pipeline()
    x = image(6)
    seeded = lambda **kw: pipe.generate_mask(x, "a cat", "a dog", n=4,  # noqa: E731
                                             generator=torch.Generator().manual_seed(2), **kw)
    soft = seeded(normalise="max", threshold=None)
    paper_soft = seeded(threshold=None, clamp_ratio=float(SIZE * SIZE))  # unclamped: map / sum
    expected = paper_soft.double() / paper_soft.double().amax()
    torch.testing.assert_close(soft.double(), expected, rtol=4 * torch.finfo(torch.float32).eps, atol=1e-6)
    assert soft.max() == 1
    mask = seeded(normalise="max", threshold=0.5)
    assert torch.equal(mask, (soft > 0.5).float()) and iou(mask, region_mask()) >= 0.9
    smoothed = seeded(normalise="max", smooth=1, threshold=None)
    assert smoothed.max() == 1 and not torch.equal(smoothed, soft)


def test_mask_strength_and_options_reach_the_mask():
    """__call__'s mask_strength / mask_normalise / mask_smooth are generate_mask's strength /
    normalise / smooth (same posterior draws: the mean posterior here)."""
    pipe = make_pipeline()
    x = image(7)
    options = dict(mask_strength=0.2, mask_normalise="max", mask_smooth=1, threshold=0.6)
    out = pipe(x, "a cat", "a dog", strength=0.6, guidance=None, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(4), **options)
    alone = pipe.generate_mask(x, "a cat", "a dog", strength=0.2, normalise="max", smooth=1, threshold=0.6,
                               generator=torch.Generator().manual_seed(4))
    assert torch.equal(out.mask, alone)
    for kw, match in (({"mask_strength": 0.0}, "mask_strength"), ({"mask_strength": 1.5}, "mask_strength"),
                      ({"mask_normalise": "median"}, "normalise"), ({"mask_smooth": -1}, "smooth"),
                      ({"mask_smooth": 1.5}, "smooth")):
        with pytest.raises(ValueError, match=match):
            pipe(x, "a cat", "a dog", progress=False, **kw)
    with pytest.raises(ValueError, match="dilate"):
        pipe.generate_mask(x, "a cat", "a dog", dilate=-2)


def test_mask_guidance_divides_out():
    """Both guided estimates share the unconditional pass, so ε̃_q − ε̃_r = w·(ε_q − ε_r) and the
    normalised mask is the unguided one (up to rounding)."""
    pipe = make_pipeline()
    seeded = lambda g: pipe.generate_mask(image(8), "a cat", "a dog", n=4, threshold=None, guidance=g,  # noqa: E731
                                          generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(seeded(5.0), seeded(None), rtol=1e-5, atol=1e-6)


def test_inversion_then_decoding_reconstructs_the_input():
    """Up to DDIM's first-order discretisation error (≈ 6% of the range at 40 steps for this model)."""
    pipe = make_pipeline()
    x = image(3)
    latents = pipe.invert(x, "a photo", strength=1.0, progress=False)
    back = ddim_sample(pipe.model, latents[-1], pipe.schedule, cond=encode_prompt(["a photo"]), progress=False)
    assert (back - x).abs().max() < 0.08 * x.abs().max()


def test_decoding_keeps_the_unmasked_region_bit_exact():
    pipe = make_pipeline()
    x = image(4)
    out = pipe(x, "a cat", "a dog", strength=0.6, guidance=3.0, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(0))
    outside = out.mask == 0
    assert torch.equal(out.images.expand_as(x)[outside.expand_as(x)], x[outside.expand_as(x)])
    assert not torch.equal(out.images, x)  # the masked region was edited


def test_blending_at_the_same_timestep_vs_one_step_late():
    """With an empty mask, blending at the same timestep returns x_0 exactly; blending one step
    late (diffusers' DiffEdit) ends on the first inverted latent instead."""
    pipe = make_pipeline()
    x = image(5)
    empty = torch.zeros(1, 1, SIZE, SIZE)
    ours = pipe(x, "a cat", "a dog", mask=empty, strength=0.5, guidance=None, output_type="pt", progress=False)
    assert torch.equal(ours.images, x)
    lagging = ours.latents[1]  # what a one-step-late blend leaves after its last step
    assert (lagging - x).abs().max() > 1e-3


def test_seeded_and_validated():
    pipe = make_pipeline()
    run = lambda: pipe(image(), "a cat", "a dog", output_type="np", progress=False,  # noqa: E731
                       generator=torch.Generator().manual_seed(3))
    a, b = run(), run()
    assert (a.images == b.images).all() and torch.equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="target_prompt"):
        pipe(image(), "a cat", "   ", progress=False)
    with pytest.raises(ValueError, match="mask"):
        pipe(image(), "a cat", "a dog", mask=torch.ones(1, 1, 5, 5), progress=False)
    with pytest.raises(TypeError, match="image"):
        pipe.generate_mask(torch.zeros(3, SIZE, SIZE), "a cat", "a dog")


def test_image_size_and_channels_are_checked_against_the_model():
    from diffrt.models.unet import UNet, UNetConfig

    model = UNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(8,), head_dim=16, context_dim=None))
    pipe = DiffEditPipeline(model, NoiseSchedule.make(), lambda prompts: None, num_steps=4)
    with pytest.raises(ValueError, match="24×24 but the model works at 16×16"):
        pipe.generate_mask(image(), "a cat", "a dog")
    with pytest.raises(ValueError, match="4 channels but the model takes 3"):
        pipe.generate_mask(torch.zeros(1, 4, 16, 16), "a cat", "a dog")


def test_empty_source_prompt_is_allowed():
    """diffusers' DiffEdit takes '' as the source prompt (the unconditional caption); so does diffrt."""
    pipe = make_pipeline()
    mask = pipe.generate_mask(image(), "", "a dog", n=8, generator=torch.Generator().manual_seed(0))
    assert iou(mask, region_mask()) >= 0.9  # '' (0.0) and 'a dog' (−1.0) disagree inside the region
    out = pipe(image(), "", "a dog", strength=0.5, guidance=3.0, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.mask, mask)
    assert len(pipe.invert(image(), "", strength=0.5, progress=False)) == 21
    with pytest.raises(ValueError, match="target_prompt"):
        pipe.generate_mask(image(), "a cat", "")


def test_schedule_options_and_strength_rounding():
    from diffrt import SamplingSchedule

    x = image(6)
    ours = DiffEditPipeline(make_pipeline().model, NoiseSchedule.make(), encode_prompt, num_steps=10, spacing="leading",
                            steps_offset=1, set_alpha_to_one=False, strength_rounding="floor")
    assert ours.schedule == SamplingSchedule.ddim(NoiseSchedule.make(), 10, steps_offset=1, set_alpha_to_one=False)
    assert ours.schedule.timesteps[-1] == 1 and ours.schedule.alphas_prev[-1] < 1.0
    floor = ours.invert(x, "a photo", strength=0.55, progress=False)
    assert len(floor) == 1 + 5  # int(0.55·10) steps, as diffusers
    ceil = DiffEditPipeline(ours.model, NoiseSchedule.make(), encode_prompt, num_steps=10, spacing="leading",
                            steps_offset=1, set_alpha_to_one=False)
    assert len(ceil.invert(x, "a photo", strength=0.55, progress=False)) == 1 + 6  # ⌈0.55·10⌉, the default
    out = ours(x, "a cat", "a dog", strength=0.55, guidance=None, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(0))
    assert len(out.latents) == 6
    with pytest.raises(ValueError, match="rounding"):
        DiffEditPipeline(ours.model, NoiseSchedule.make(), encode_prompt, strength_rounding="nearest")


def test_posterior_sampling_needs_a_codec_with_a_posterior():
    model = make_pipeline().model
    with pytest.raises(ValueError, match="posterior='sample' needs a codec .* PixelCodec has no posterior"):
        DiffEditPipeline(model, NoiseSchedule.make(), encode_prompt, posterior="sample")
    with pytest.raises(ValueError, match="posterior must be one of"):
        DiffEditPipeline(model, NoiseSchedule.make(), encode_prompt, posterior="mode")


class CountingCodec:
    """Pixel space, recording the batch of every encode (each one a VAE pass in a latent codec)."""

    def __init__(self):
        self.encoded = []

    def encode(self, images):
        self.encoded.append(images.shape[0])
        return images

    def decode(self, latents):
        return latents


class GaussianCodec(CountingCodec):
    """A toy VAE whose posterior is q(z | x) = N(x/2, 0.1²), recording its encoder passes."""

    def posterior(self, images):
        self.encoded.append(images.shape[0])
        return LatentPosterior(images / 2, torch.full_like(images, 0.1), lambda z: z)

    def decode(self, latents):
        return 2 * latents


def test_a_call_encodes_its_image_once():
    codec = CountingCodec()
    pipe = make_pipeline(codec=codec)
    x = image(7, b=2)
    out = pipe(x, "a cat", ["a dog", "a photo"], n=4, strength=0.5, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(0))
    assert codec.encoded == [2]  # not once for the mask and again for the inversion
    plain = make_pipeline()(x, "a cat", ["a dog", "a photo"], n=4, strength=0.5, output_type="pt", progress=False,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.images, plain.images) and torch.equal(out.mask, plain.mask)
    codec.encoded.clear()
    pipe.generate_mask(x, "a cat", "a dog", n=4, generator=torch.Generator().manual_seed(0))
    pipe.invert(x, "a cat", progress=False)
    assert codec.encoded == [2, 2]


def test_posterior_samples_come_from_one_encoding_in_the_documented_order():
    """posterior="sample": one encoder pass; the inversion draws its latent first, then the mask one
    latent per noise draw, then the mask's noise — all from the call's generator."""
    codec = GaussianCodec()
    pipe = make_pipeline(codec=codec, posterior="sample")
    x = image(8, b=2)
    out = pipe(x, ["a cat", "a photo"], "a dog", n=4, strength=0.5, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(3))
    assert codec.encoded == [2]
    g = torch.Generator().manual_seed(3)
    x0 = x / 2 + 0.1 * torch.randn(x.shape, generator=g)  # the inversion's draw
    assert torch.equal(out.latents[0], x0)
    mask = pipe.generate_mask(x, ["a cat", "a photo"], "a dog", n=4, strength=0.5, generator=g)  # the stream goes on
    assert torch.equal(out.mask, mask) and 0 < mask.sum() < mask.numel()
    # the mask's n latents per image are n draws, image-major
    draws = LatentPosterior(x / 2, torch.full_like(x, 0.1), lambda z: z).sample(torch.Generator().manual_seed(4), copies=3)
    assert draws.shape == (6, 3, SIZE, SIZE) and not torch.equal(draws[0], draws[1])
    assert (draws[:3] - x[:1] / 2).abs().max() < 1 and (draws[3:] - x[1:] / 2).abs().max() < 1


def test_guidance_takes_numbers_per_image_tensors_and_schedules():
    pipe = make_pipeline()
    x, mask = image(9, b=2), region_mask()

    def edit(guidance, **kw):
        return pipe(x, "a cat", "a dog", mask=mask, strength=0.5, guidance=guidance, output_type="pt", progress=False,
                    **kw).images

    per_image = edit(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(per_image[:1], edit(3.0)[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(per_image[1:], edit(None)[1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(edit(ConstantGuidance(3.0)), edit(3.0), rtol=0, atol=0)
    assert not torch.equal(edit(OscillatingGuidance(high=6.0, low=1.0)), edit(3.0))
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        edit(float("nan"))


def test_mask_guidance_takes_per_image_weights_but_no_schedule():
    pipe = make_pipeline()
    x = image(10, b=2)

    def soft(guidance):
        return pipe.generate_mask(x, "a cat", "a dog", n=4, threshold=None, guidance=guidance,
                                  generator=torch.Generator().manual_seed(5))

    per_image = soft(torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(per_image[:1], soft(3.0)[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(per_image[1:], soft(None)[1:], rtol=0, atol=1e-6)
    assert torch.equal(soft(torch.tensor([3.0])), soft(3.0))
    with pytest.raises(TypeError, match="guidance must be a number or a 1-D tensor .* one model call at one timestep"):
        soft(ConstantGuidance(3.0))
    with pytest.raises(ValueError, match="guidance must hold 1 or 2 per-image weights"):
        soft(torch.tensor([3.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match="mask_guidance must be a number"):
        pipe(x, "a cat", "a dog", mask_guidance=OscillatingGuidance(), progress=False)
