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
        for name, p in model.named_parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def pipe():
    noise = NoiseSchedule.make("linear", beta_start=1e-4, beta_end=0.02)
    return ImagenEditorPipeline(unet(8, 16), noise, encode_prompt, super_resolution=unet(16, 16, low_res_channels=3),
                                num_steps=4, sr_num_steps=3)


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
