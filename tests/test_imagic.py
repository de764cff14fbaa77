"""Imagic on a tiny UNet: stage A moves the embedding, stage B fits the image, η = 0 reproduces
the input closely, η interpolates, everything is seeded, the base model is untouched."""

import pytest
import torch

from diffrt import NoiseSchedule
from diffrt.models.unet import UNet, UNetConfig
from diffrt.pipelines import ImagicPipeline, interpolate_condition

PROMPTS = {"": 0, "a red square": 1, "a blue square": 2}


def encode_prompt(prompts):
    table = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([PROMPTS[p] for p in prompts])
    return {"context": table[idx], "context_mask": torch.ones(len(prompts), 4, dtype=torch.bool)}


def tiny_unet():
    """A stand-in for a pretrained model: the zero-initialised output layers get small weights, so
    the text context reaches the output (it does not through an untrained cross-attention)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(4,), head_dim=16, context_dim=16, prediction_type="sample"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.05)
    return model


def test_interpolation_of_conditions():
    a, b = encode_prompt(["a red square"]), encode_prompt(["a blue square"])
    mid = interpolate_condition(a, b, 0.25)
    torch.testing.assert_close(mid["context"], 0.25 * a["context"] + 0.75 * b["context"])
    assert mid["context_mask"] is a["context_mask"]


def test_imagic_reproduces_its_input_at_eta_zero():
    image = torch.zeros(1, 3, 8, 8)
    image[..., 2:6, 2:6] = 0.8  # a square
    base = tiny_unet()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pipe = ImagicPipeline(base, NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02), encode_prompt,
                          num_steps=20)
    pipe.fit(image, "a blue square", embedding_steps=30, embedding_lr=1e-2, finetune_steps=150, finetune_lr=3e-3,
             generator=torch.Generator().manual_seed(1), progress=False)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # base model untouched
    assert not torch.equal(pipe.e_opt["context"], pipe.e_tgt["context"])
    out = pipe([0.0, 1.0], guidance=None, output_type="pt", generator=torch.Generator().manual_seed(2),
               progress=False)
    assert out.images.shape == (2, 3, 8, 8) and out.etas == [0.0, 1.0]
    err = (out.images[0] - image[0]).abs().mean().item()
    print("mean abs error at eta=0:", err)
    assert err < 0.1, err
    again = pipe([0.0, 1.0], guidance=None, output_type="pt", generator=torch.Generator().manual_seed(2),
                 progress=False)
    assert torch.equal(out.images, again.images)


def test_imagic_validation():
    pipe = ImagicPipeline(tiny_unet(), NoiseSchedule.make(), encode_prompt, num_steps=5)
    with pytest.raises(RuntimeError, match="fit"):
        pipe([0.5])
    with pytest.raises(ValueError, match="one image"):
        pipe.fit(torch.zeros(2, 3, 8, 8), "a red square", progress=False)
    with pytest.raises(ValueError, match="finetune"):
        pipe.fit(torch.zeros(1, 3, 8, 8), "a red square", finetune="lora", progress=False)


def test_imagic_runs_on_a_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    from diffrt.integrations.diffusers import DiffusersUNetDenoiser

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=8)
    table = {p: torch.randn(1, 3, 16) for p in ["", "a blue square"]}
    model = DiffusersUNetDenoiser(unet, prediction_type="epsilon")
    pipe = ImagicPipeline(model, NoiseSchedule.make(), lambda ps: torch.cat([table[p] for p in ps]),
                          num_steps=3)
    latents = torch.randn(1, 4, 8, 8)
    pipe.fit(latents, "a blue square", embedding_steps=2, finetune_steps=2, finetune="efficient", progress=False)
    assert not torch.equal(pipe.e_opt, pipe.e_tgt)
    out = pipe([0.0, 0.5], guidance=2.0, output_type="pt", progress=False)
    assert out.images.shape == (2, 4, 8, 8)


def test_imagic_guidance_per_eta():
    """Each η samples alone; a 1-D tensor of guidance weights holds one per η."""
    from diffrt import ConstantGuidance

    pipe = ImagicPipeline(tiny_unet(), NoiseSchedule.make(), encode_prompt, num_steps=3)
    pipe.fit(torch.zeros(1, 3, 8, 8), "a blue square", embedding_steps=1, finetune_steps=1, progress=False)

    def sweep(etas, guidance):
        return pipe(etas, guidance=guidance, output_type="pt", generator=torch.Generator().manual_seed(3),
                    progress=False).images

    per_eta = sweep([0.0, 0.5], torch.tensor([3.0, 1.0]))
    assert torch.equal(per_eta[:1], sweep([0.0], 3.0)) and torch.equal(per_eta[1:], sweep([0.5], None))
    assert torch.equal(sweep([0.5], ConstantGuidance(2.0)), sweep([0.5], 2.0))
    with pytest.raises(ValueError, match="one weight per η or one for all: 1 or 2 weights, got 3"):
        sweep([0.0, 0.5], torch.tensor([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        sweep([0.5], float("nan"))


def test_only_the_text_embedding_is_optimised_and_interpolated():
    """An image-conditioned UNet used as text-to-image gets a zero image and an all-ones mask beside the
    text: stage A must not turn them into a copy of the input (the paper optimises the text embedding)."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(4,), head_dim=16, context_dim=16, prediction_type="sample",
                            cond_image=True, cond_channels=8))
    with torch.no_grad():  # as tiny_unet: the text context and the image condition reach the output
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.05)

    def encode(prompts):
        return {**encode_prompt(prompts), **model.full_mask_condition(len(prompts))}

    pipe = ImagicPipeline(model, NoiseSchedule.make(), encode, num_steps=3)
    pipe.fit(torch.rand(1, 3, 8, 8) * 2 - 1, "a blue square", embedding_steps=3, embedding_lr=0.1, finetune_steps=1,
             progress=False)
    assert not torch.equal(pipe.e_opt["context"], pipe.e_tgt["context"])
    for key in ("image", "mask", "context_mask"):
        assert torch.equal(pipe.e_opt[key], pipe.e_tgt[key]), key
    seen = []
    pipe.model.forward = lambda x, t, cond, f=pipe.model.forward: seen.append(cond) or f(x, t, cond)
    pipe([0.3], guidance=1.0, output_type="pt", progress=False)  # no unconditional half in the batch
    assert all(torch.equal(c["image"], pipe.e_tgt["image"]) and torch.equal(c["mask"], pipe.e_tgt["mask"])
               for c in seen)
    torch.testing.assert_close(seen[0]["context"], 0.3 * pipe.e_tgt["context"] + 0.7 * pipe.e_opt["context"])
    with pytest.raises(ValueError, match="none of embedding_keys"):
        ImagicPipeline(model, NoiseSchedule.make(), lambda ps: {"other": torch.zeros(1, 4, 16)}).fit(
            torch.zeros(1, 3, 8, 8), "a blue square", progress=False)
    with pytest.raises(ValueError, match="embedding_keys must be"):
        ImagicPipeline(model, NoiseSchedule.make(), encode, embedding_keys="context")
