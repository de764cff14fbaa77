"""unCLIP on tiny models: slerp, best-of-2 prior sampling, decoding, variations, interpolation
endpoints and a zero text diff."""

import math

import pytest
import torch

from diffrt import NoiseSchedule
from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.prior import DiffusionPrior, PriorConfig
from diffrt.models.text_encoder import TextEncoder
from diffrt.models.tokenizer import Tokenizer
from diffrt.models.unet import UNet, UNetConfig
from diffrt.pipelines import UnCLIPPipeline, slerp

PROMPTS = ["a red circle", "a blue square"]


def test_slerp_on_the_sphere():
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1), torch.nn.functional.normalize(
        torch.randn(3, 16, generator=g), dim=-1)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    omega = torch.acos((a * b).sum(-1))
    for t in (0.25, 0.5, 0.8):
        m = slerp(a, b, t)
        torch.testing.assert_close(m.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(torch.acos((a * m).sum(-1).clamp(-1, 1)), t * omega, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel rows do not divide by sin 0


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tok = Tokenizer.train(PROMPTS, vocab_size=340, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=32, text_layers=1, text_heads=4,
                           image_size=16, patch_size=4, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    prior = DiffusionPrior(PriorConfig(embed_dim=16, text_width=32, max_length=8, width=32, layers=1, heads=4))
    decoder = UNet(UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                              attention_resolutions=(8,), head_dim=16, context_dim=32, image_embed_dim=16))
    with torch.no_grad():  # small non-zero output layers: outputs depend on every input
        for name, p in decoder.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.05)
    return UnCLIPPipeline(prior, decoder, TextEncoder(tok, clip), clip.encode_image,
                          noise_schedule=NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02),
                          num_steps=4, prior_steps=3)


def test_generation_is_seeded_and_keeps_the_best_of_two(pipe):
    run = lambda: pipe(PROMPTS, output_type="pt", generator=torch.Generator().manual_seed(5), progress=False)  # noqa: E731
    a, b = run(), run()
    assert a.images.shape == (2, 3, 16, 16) and torch.equal(a.images, b.images)
    z = pipe.sample_image_embeds(PROMPTS, generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(z, a.image_embeds)
    # the kept embedding is the best of the 2 candidates by similarity to the caption embedding
    best, candidates = pipe.sample_image_embeds(PROMPTS, generator=torch.Generator().manual_seed(5), progress=False,
                                                return_candidates=True)
    text = pipe.text_encoder(PROMPTS)["pooled"]
    assert candidates.shape == (2, 2, 16) and torch.equal(best, z)
    sims = torch.cosine_similarity(candidates, text[:, None], dim=-1)
    assert torch.equal(best, candidates[torch.arange(2), sims.argmax(1)])


def test_interpolation_endpoints_equal_decoding_each_endpoint(pipe):
    za = pipe.image_encoder(torch.rand(1, 3, 16, 16) * 2 - 1)
    zb = pipe.image_encoder(torch.rand(1, 3, 16, 16) * 2 - 1)
    out = pipe.interpolate(za, zb, ts=(0.0, 0.5, 1.0), output_type="pt", generator=torch.Generator().manual_seed(1),
                           progress=False)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ends = pipe.decode(torch.cat([za, zb]), x_T=x_T.expand(2, -1, -1, -1).clone(), progress=False)
    # equal up to float32 rounding, which differs between batch sizes and grows through the sampler
    torch.testing.assert_close(out.images[[0, 2]], ends, rtol=1e-3, atol=1e-3)


def test_zero_text_diff_changes_nothing(pipe):
    """θ = 0 decodes the input's own embedding from its DDIM inversion at η = 0: what a variation at
    η = 0 gives; with noise="shared", from a fresh x_T of the generator."""
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    out = pipe.text_diff(image, "a red circle", "a blue square", amounts=(0.0, 0.5), output_type="pt",
                         progress=False)
    torch.testing.assert_close(out.image_embeds[0], pipe.image_encoder(image)[0])
    assert not torch.allclose(out.image_embeds[1], out.image_embeds[0])
    kept = pipe.variations(image, num_variations=1, eta=0.0, output_type="pt", progress=False).images
    torch.testing.assert_close(out.images[:1], kept, rtol=1e-3, atol=1e-3)  # batch of 2 vs 1: rounding only
    shared = pipe.text_diff(image, "a red circle", "a blue square", amounts=(0.0, 0.5), noise="shared", guidance=3.0,
                            output_type="pt", generator=torch.Generator().manual_seed(2), progress=False)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shared.images[:1], pipe.decode(out.image_embeds[:1], x_T=x_T, progress=False),
                               rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="noise must be one of"):
        pipe.text_diff(image, "a red circle", "a blue square", noise="fresh", progress=False)


def test_batched_interpolation_and_text_diff_match_one_input_at_a_time(pipe):
    """B inputs give B·len(ts) outputs, input-major, each input from its own x_T as if alone."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    za, zb = pipe.image_encoder(images), pipe.image_encoder(images.flip(-1))
    both = pipe.interpolate(za, zb, ts=(0.0, 0.5), output_type="pt", generator=torch.Generator().manual_seed(4),
                            progress=False)
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        alone = pipe.decode(torch.cat([za[i:i + 1], pipe.interpolate(za[i:i + 1], zb[i:i + 1], ts=(0.5,),
                                                                     output_type="pt", progress=False).image_embeds]),
                            x_T=noise[i:i + 1].expand(2, -1, -1, -1).clone(), progress=False)
        torch.testing.assert_close(both.images[2 * i: 2 * i + 2], alone, rtol=1e-3, atol=1e-3)
    sources, targets = ["a red circle", "a blue square"], ["a blue square", "a red circle"]
    diff = pipe.text_diff(images, sources, targets, amounts=(0.0, 0.5), output_type="pt", noise="shared",
                          guidance=3.0, generator=torch.Generator().manual_seed(4), progress=False)
    inverted = pipe.text_diff(images, sources, targets, amounts=(0.0, 0.5), output_type="pt", progress=False)
    assert diff.images.shape == inverted.images.shape == (4, 3, 16, 16)
    for i in range(2):
        alone = pipe.text_diff(images[i:i + 1], sources[i], targets[i], amounts=(0.0, 0.5), output_type="pt",
                               progress=False)
        torch.testing.assert_close(diff.image_embeds[2 * i: 2 * i + 2], alone.image_embeds)
        # The DDIM inversion amplifies float32 rounding, which differs between a batch of 2 and of 1 in
        # torch's convolutions (with 1 thread, one pixel in 1536 came out 1.5e-3 apart).
        torch.testing.assert_close(inverted.images[2 * i: 2 * i + 2], alone.images, rtol=1e-3, atol=5e-3)
        torch.testing.assert_close(diff.images[2 * i: 2 * i + 2],
                                   pipe.decode(alone.image_embeds, x_T=noise[i:i + 1].expand(2, -1, -1, -1).clone(),
                                               progress=False), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="one caption or one per image"):
        pipe.text_diff(images, ["a", "b", "c"], "d", progress=False)
    with pytest.raises(ValueError, match="embeds_a and embeds_b must be"):
        pipe.interpolate(za, zb[:1], progress=False)


def test_variations(pipe):
    out = pipe.variations(torch.rand(1, 3, 16, 16) * 2 - 1, num_variations=3, output_type="np",
                          generator=torch.Generator().manual_seed(3), progress=False)
    assert out.images.shape == (3, 16, 16, 3) and out.images.dtype.name == "uint8"
    assert not (out.images[0] == out.images[1]).all()  # η > 0: each variation differs
    assert math.isfinite(float(out.image_embeds.sum()))


def test_variations_keep_the_input_at_their_default_guidance(pipe):
    """A decoder whose ε is exact for data N(0, 0.5²) plus a shift set by the image embedding, so
    guidance changes it. The inversion is unguided, so at the default guidance (1) and η = 0 the
    variations reconstruct the input (up to DDIM's discretisation error); decoded with guidance 3,
    the same inverted noise lands elsewhere. η > 0 makes them differ from each other."""
    from types import SimpleNamespace

    from diffrt import FunctionDenoiser

    schedule = NoiseSchedule.make()
    ab = schedule.alphas_cumprod

    def fn(x, t, cond):
        a = ab[t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (1 - a).sqrt() * x / (0.25 * a + 1 - a)
        return eps + 0.1 * cond["image_embed"].mean(dim=1).view(-1, 1, 1, 1)

    decoder = FunctionDenoiser(fn, in_channels=3, out_channels=3)
    decoder.config = SimpleNamespace(image_size=16)
    toy = UnCLIPPipeline(None, decoder, pipe.text_encoder, lambda image: torch.ones(image.shape[0], 16),
                         noise_schedule=schedule, num_steps=100)
    x = (0.5 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(9))).clamp(-1, 1)
    vary = lambda **kw: toy.variations(x, num_variations=2, output_type="pt", progress=False,  # noqa: E731
                                       generator=torch.Generator().manual_seed(1), **kw).images
    kept = vary(eta=0.0)
    assert torch.equal(kept[0], kept[1]) and (kept[0] - x[0]).abs().max() < 0.1
    assert (vary(eta=0.0, guidance=3.0)[0] - x[0]).abs().max() > 0.3
    varied, strayed = vary(), vary(eta=1.0)  # the default η = 0.1, and the paper's 1
    assert not torch.equal(varied[0], varied[1])
    assert (varied - x).abs().mean() < 0.5 * (strayed - x).abs().mean()


def test_prior_guidance_per_prompt_and_as_a_schedule(pipe):
    """A 1-D tensor holds one weight per prompt; each applies to all the prompt's candidates."""
    from diffrt import ConstantGuidance

    def embeds(guidance):
        return pipe.sample_image_embeds(PROMPTS, guidance=guidance, generator=torch.Generator().manual_seed(6),
                                        progress=False, return_candidates=True)[1]

    per_prompt = embeds(torch.tensor([4.0, 1.0]))
    assert torch.equal(per_prompt, embeds(torch.tensor([4.0, 4.0, 1.0, 1.0])))  # per candidate, as the sampler runs
    assert not torch.equal(per_prompt, embeds(4.0))
    assert torch.equal(embeds(ConstantGuidance(4.0)), embeds(4.0))
    with pytest.raises(ValueError, match="prior_guidance must be a finite number"):
        pipe(PROMPTS, prior_guidance=math.nan, progress=False)
    with pytest.raises(ValueError, match="sr_guidance must hold finite weights"):
        pipe.decode(embeds(4.0)[:, 0], sr_guidance=torch.tensor([1.0, math.inf]), progress=False)
    with pytest.raises(TypeError, match="guidance must be a number, a 1-D tensor"):
        pipe.variations(torch.zeros(1, 3, 16, 16), guidance="high", progress=False)


def test_a_pipeline_without_a_prior_varies_images_but_cannot_generate(pipe):
    no_prior = UnCLIPPipeline(None, pipe.decoder, pipe.text_encoder, pipe.image_encoder,
                              noise_schedule=pipe.noise_schedule, num_steps=4)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    for p in (pipe, no_prior):  # the same variations with and without a prior
        out = p.variations(image, num_variations=2, output_type="pt", generator=torch.Generator().manual_seed(3),
                           progress=False)
        torch.testing.assert_close(out.images, pipe.variations(image, num_variations=2, output_type="pt",
                                                               generator=torch.Generator().manual_seed(3),
                                                               progress=False).images)
    with pytest.raises(ValueError, match="no prior"):
        no_prior(PROMPTS, progress=False)
