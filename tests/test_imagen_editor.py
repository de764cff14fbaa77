"""The Imagen Editor cascade on tiny UNets: inpainting with an exact composite, text-to-image without
an image, the SR stage on the noise-augmented base output, seeds and input validation."""

import pytest
import torch

from diffrt import NoiseSchedule, OscillatingGuidance
from diffrt.models.unet import UNet, UNetConfig
from diffrt.pipelines import ImagenEditorPipeline

WIDTH = 16


def encode_prompt(prompts):
    g = torch.Generator().manual_seed(0)
    table = {p: torch.randn(3, WIDTH, generator=g) for p in ["", "a red circle", "a blue square"]}
    return {"context": torch.stack([table[p] for p in prompts]),
            "context_mask": torch.ones(len(prompts), 3, dtype=torch.bool)}


def unet(size, cond_size, **kw):
    torch.manual_seed(size)
    model = UNet(UNetConfig(image_size=size, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(size // 2,), head_dim=16, context_dim=WIDTH, cond_image=True,
                            cond_image_size=cond_size, cond_channels=8, **kw))
    with torch.no_grad():  # stand-in for trained weights: every path reaches the output
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def pipe():
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    return ImagenEditorPipeline(unet(8, 16), noise, encode_prompt, super_resolution=unet(16, 16, low_res_channels=3),
                                num_steps=4, sr_steps=3)


def inputs():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 3:9] = 1
    return image, mask


def test_inpainting_composite_keeps_unmasked_pixels_bit_exact(pipe):
    image, mask = inputs()
    out = pipe(["a red circle", "a blue square"], image, mask, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(2))
    keep = (mask == 0).expand_as(image)
    assert out.images.shape == (2, 3, 16, 16) and out.base.shape == (2, 3, 8, 8)
    assert torch.equal(out.images[keep], image[keep])
    assert not torch.equal(out.images[~keep], image[~keep])
    raw = pipe(["a red circle", "a blue square"], image, mask, composite=False, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(2))
    assert torch.equal(raw.images[~keep], out.images[~keep]) and not torch.equal(raw.images[keep], image[keep])


def test_text_to_image_and_num_images_per_prompt(pipe):
    out = pipe("a red circle", num_images_per_prompt=3, guidance=OscillatingGuidance(high=10.0, low=1.0),
               composite=False, output_type="np", progress=False, generator=torch.Generator().manual_seed(3))
    assert out.images.shape == (3, 16, 16, 3)
    assert not (out.images[0] == out.images[1]).all()


def test_seeded(pipe):
    image, mask = inputs()
    run = lambda: pipe(["a red circle", "a blue square"], image, mask, output_type="pt", progress=False,  # noqa: E731
                       generator=torch.Generator().manual_seed(4))
    assert torch.equal(run().images, run().images)


def test_input_validation(pipe):
    image, mask = inputs()
    with pytest.raises(ValueError, match="16×16"):
        pipe(["a red circle", "a blue square"], image[..., :8, :8], mask[..., :8, :8], progress=False)
    with pytest.raises(ValueError, match="without mask"):
        pipe(["a red circle", "a blue square"], image, progress=False)
    with pytest.raises(ValueError, match="prompt"):
        pipe(["a red circle", ""], image, mask, progress=False)
    with pytest.raises(ValueError, match="mask must have shape"):
        pipe(["a red circle", "a blue square"], image, torch.ones(2, 3, 16, 16), progress=False)


def test_pil_and_numpy_inputs_of_any_size(pipe):
    import numpy as np
    from PIL import Image

    image, _ = inputs()
    pil_image = Image.fromarray(((image[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    big = np.zeros((64, 64), dtype=np.uint8)
    big[16:48, 12:36] = 255  # the same region as inputs()' mask, at 4× the size
    out = pipe("a red circle", pil_image.resize((40, 40)), Image.fromarray(big), output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(6))
    from_numpy = pipe("a red circle", pil_image.resize((40, 40)), big, output_type="pt", progress=False,
                      generator=torch.Generator().manual_seed(6))
    assert torch.equal(out.images, from_numpy.images)
    expected = torch.zeros(1, 1, 16, 16)
    expected[..., 4:12, 3:9] = 1
    keep = (expected == 0).expand(1, 3, 16, 16)
    from diffrt.images import from_pil

    assert torch.equal(out.images[keep], from_pil(pil_image.resize((40, 40)), size=16)[keep])
    with pytest.raises(ValueError, match="mask values"):
        pipe("a red circle", image[:1], torch.full((16, 16), 2.0), progress=False)


def test_bfloat16_models(monkeypatch):
    monkeypatch.setenv("DIFFRT_CPU_BF16", "1")  # bfloat16 compute on any CPU (else float32 where bf16 is slow)
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    bf16 = ImagenEditorPipeline(unet(8, 16).to(torch.bfloat16), noise, encode_prompt,
                                super_resolution=unet(16, 16, low_res_channels=3).to(torch.bfloat16), num_steps=3,
                                sr_steps=2)
    image, mask = inputs()
    out = bf16(["a red circle", "a blue square"], image, mask, output_type="pt", progress=False,
               generator=torch.Generator().manual_seed(2))
    keep = (mask == 0).expand_as(image)
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    assert torch.equal(out.images[keep], image[keep])


def test_guidance_per_image_and_its_checks(pipe):
    image, mask = inputs()

    def base(guidance):
        return pipe(["a red circle", "a blue square"], image, mask, guidance=guidance, output_type="pt", progress=False,
                    generator=torch.Generator().manual_seed(7)).base

    per_image = base(torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(per_image[:1], base(10.0)[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(per_image[1:], base(1.0)[1:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="sr_guidance must be a finite number"):
        pipe("a red circle", sr_guidance=float("inf"), progress=False)
    with pytest.raises(ValueError, match="guidance as a tensor must be a real 1-D tensor"):
        pipe("a red circle", guidance=torch.ones(1, 1), progress=False)
