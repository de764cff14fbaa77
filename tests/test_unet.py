"""The UNet: forward shapes for every conditioning combination, zero-init equivalence of the image
conditioning, save/load, bad configs, and sampling through the Denoiser protocol."""

import itertools

import pytest
import torch

import diffrt
from diffrt import NoiseSchedule, SamplingSchedule, ddim_sample
from diffrt.models.unet import UNet, UNetConfig

BASE = dict(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
            head_dim=16, groups=8, context_dim=24)


def randomise(model, seed=0, skip=()):
    """Replace the zero initialisations with random values so outputs depend on every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(name.startswith(s) for s in skip):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def make_cond(cfg, b, g):
    cond = {}
    if cfg.context_dim:
        cond["context"] = torch.randn(b, 6, cfg.context_dim, generator=g)
        cond["context_mask"] = torch.arange(6)[None].repeat(b, 1) < torch.tensor([[3], [6]])[:b]
    if cfg.pooled_text_dim:
        cond["pooled"] = torch.randn(b, cfg.pooled_text_dim, generator=g)
    if cfg.low_res_channels:
        cond["low_res"] = torch.randn(b, cfg.low_res_channels, cfg.image_size // 2, cfg.image_size // 2, generator=g)
        cond["noise_level"] = torch.tensor([0, 250])[:b]
    if cfg.image_embed_dim:
        cond["image_embed"] = torch.randn(b, cfg.image_embed_dim, generator=g)
    if cfg.cond_image:
        side = cfg.cond_side
        cond["image"] = torch.rand(b, 3, side, side, generator=g) * 2 - 1
        cond["mask"] = (torch.rand(b, 1, side, side, generator=g) > 0.5).float()
    return cond


# The image-embedding tokens extend the text context, so they come only with text.
COMBINATIONS = [c for c in itertools.product([None, 16], [0, 3], [None, 20], [True, False]) if c[3] or not c[2]]


@pytest.mark.parametrize("pooled,low_res,image_embed,text", COMBINATIONS)
def test_forward_shapes_for_every_conditioning(pooled, low_res, image_embed, text):
    cfg = UNetConfig(**{**BASE, "context_dim": 24 if text else None}, pooled_text_dim=pooled, low_res_channels=low_res,
                     image_embed_dim=image_embed)
    model = randomise(UNet(cfg))
    g = torch.Generator().manual_seed(1)
    out = model(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 700]), make_cond(cfg, 2, g))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    assert isinstance(model, diffrt.Denoiser)


def test_context_padding_is_masked():
    """Changing the padded text tokens must not change the output."""
    cfg = UNetConfig(**BASE)
    model = randomise(UNet(cfg))
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 10])
    cond = make_cond(cfg, 2, g)
    other = {**cond, "context": cond["context"].clone()}
    other["context"][0, 3:] += 5.0  # row 0 attends to its first 3 tokens only
    torch.testing.assert_close(model(x, t, cond), model(x, t, other))


def test_gradients_reach_every_parameter():
    cfg = UNetConfig(**BASE, pooled_text_dim=8, low_res_channels=3, image_embed_dim=12)
    model = randomise(UNet(cfg))
    g = torch.Generator().manual_seed(3)
    out = model(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([1, 2]), make_cond(cfg, 2, g))
    out.square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


def test_save_load_round_trip(tmp_path):
    model = randomise(UNet(UNetConfig(**BASE, low_res_channels=3)))
    model.save_pretrained(tmp_path)
    again = UNet.from_pretrained(tmp_path)
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("bad,match", [
    (dict(base_channels=30), "divisible by groups"),
    (dict(attention_resolutions=(4,)), "not UNet resolutions"),
    (dict(image_size=15), "divisible"),
    (dict(prediction_type="score"), "prediction_type"),
    (dict(head_dim=24), "head_dim"),
])
def test_bad_configs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**{**BASE, **bad})


def test_samples_through_ddim_sample():
    cfg = UNetConfig(**BASE, prediction_type="v_prediction")
    model = randomise(UNet(cfg)).eval()
    g = torch.Generator().manual_seed(4)
    cond = make_cond(cfg, 2, g)
    uncond = {"context": torch.zeros_like(cond["context"]), "context_mask": cond["context_mask"]}
    x = ddim_sample(model, torch.randn(2, 3, 16, 16, generator=g), SamplingSchedule.ddim(NoiseSchedule.make(), 4),
                    cond=cond, uncond=uncond, guidance=3.0, progress=False)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


def test_wrong_input_size_is_rejected():
    model = UNet(UNetConfig(**BASE))
    with pytest.raises(ValueError, match="16×16"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1]), {})


@pytest.mark.parametrize("cond_image_size", [16, 64])
def test_image_conditioning_starts_out_as_the_text_to_image_model(cond_image_size):
    """DownsampleCond is zero-initialised: with the same other weights, a UNet with image + mask
    inputs gives exactly the output of the one without, whatever the image, and still learns."""
    plain = randomise(UNet(UNetConfig(**BASE)))
    cfg = UNetConfig(**BASE, cond_image=True, cond_image_size=cond_image_size, cond_channels=8)
    editor = UNet(cfg)
    randomise(editor, skip=("cond_conv",))
    state = editor.state_dict()
    for k, v in plain.state_dict().items():
        if k == "conv_in.weight":  # the editor's first conv has 8 more input channels
            state[k][:, : v.shape[1]] = v
        else:
            state[k] = v
    editor.load_state_dict(state)
    assert not editor.cond_conv.weight.any()
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([7, 300])
    cond = make_cond(cfg, 2, g)
    torch.testing.assert_close(editor(x, t, cond), plain(x, t, cond), rtol=0, atol=0)
    editor(x, t, cond).square().mean().backward()
    assert editor.cond_conv.weight.grad.abs().sum() > 0


def test_patched_unet_is_the_plain_unet_on_pixel_unshuffled_inputs():
    """patch_size p: unshuffle p×p patches into channels, run the levels at side/p, shuffle back."""
    patched = randomise(UNet(UNetConfig(**{**BASE, "attention_resolutions": (4,)}, patch_size=2)))
    plain = UNet(UNetConfig(**{**BASE, "image_size": 8, "attention_resolutions": (4,)}, in_channels=12,
                            out_channels=12))
    plain.load_state_dict(patched.state_dict())
    g = torch.Generator().manual_seed(6)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([5, 900])
    cond = make_cond(patched.config, 2, g)
    expected = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), t, cond), 2)
    torch.testing.assert_close(patched(x, t, cond), expected)


@pytest.mark.parametrize("cond_image_size", [16, 32])
def test_patched_unet_takes_every_conditioning(cond_image_size):
    cfg = UNetConfig(**{**BASE, "attention_resolutions": (4,)}, patch_size=2, pooled_text_dim=8, low_res_channels=3,
                     cond_image=True, cond_image_size=cond_image_size, cond_channels=8)
    assert cfg.inner_size == 8 and cfg.cond_stride == cond_image_size // 8
    model = randomise(UNet(cfg))
    g = torch.Generator().manual_seed(7)
    out = model(torch.randn(2, 3, 16, 16, generator=g), torch.tensor([1, 2]), make_cond(cfg, 2, g))
    assert out.shape == (2, 3, 16, 16)
    out.square().mean().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, silent


@pytest.mark.parametrize("patch_size,match", [(3, "divide image_size"), (0, "patch_size"), (16, "divisible by 2")])
def test_bad_patch_sizes_are_rejected(patch_size, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**BASE, patch_size=patch_size)


def test_a_middle_block_whose_width_is_not_a_multiple_of_head_dim_is_rejected():
    """The middle block always attends: a width that head_dim does not divide used to drop its
    attention silently (a different architecture from the one configured)."""
    with pytest.raises(ValueError, match=r"middle block width 48 .* not a multiple of head_dim 32"):
        UNetConfig(**{**BASE, "base_channels": 24, "channel_mult": (1, 2), "attention_resolutions": (), "head_dim": 32})
    UNet(UNetConfig(**{**BASE, "base_channels": 32, "channel_mult": (1, 2), "attention_resolutions": (),
                       "head_dim": 32}))  # 64 wide: two heads


def test_blocks_keep_their_weight_names():
    """Weight files name the blocks as the UNet always has: down.i.0 (ResBlock) / down.i.1 (attention),
    down.i.weight (downsample), mid.0-2, up.i.0 / up.i.1, up.i.1.weight (upsample conv)."""
    keys = set(UNet(UNetConfig(**BASE)).state_dict())
    for key in ("down.0.0.conv1.weight", "down.1.weight", "down.2.0.conv1.weight", "down.2.1.qkv.weight",
                "mid.0.conv1.weight", "mid.1.qkv.weight", "mid.2.conv2.weight", "up.0.0.conv1.weight",
                "up.0.1.qkv.weight", "up.2.1.weight", "up.3.0.conv1.weight"):
        assert key in keys, key
    assert not any(k.startswith(("down.0.1.", "up.3.1.")) for k in keys)  # no attention at 16×16


def test_full_mask_condition():
    plain = UNet(UNetConfig(**BASE))
    assert plain.full_mask_condition(2) == {}
    editor = UNet(UNetConfig(**BASE, cond_image=True, cond_image_size=32, cond_channels=8))
    assert editor.config.cond_side == 32 and UNetConfig(**BASE, cond_image=True, cond_channels=8).cond_side == 16
    full = editor.full_mask_condition(3, dtype=torch.float64)
    assert full["image"].shape == (3, 3, 32, 32) and full["mask"].shape == (3, 1, 32, 32)
    assert full["image"].dtype == full["mask"].dtype == torch.float64
    assert not full["image"].any() and full["mask"].eq(1).all()


def test_inpainting_condition_resizes_to_the_conditioning_side():
    editor = UNet(UNetConfig(**BASE, cond_image=True, cond_channels=8))  # cond_side 16
    g = torch.Generator().manual_seed(8)
    image = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    mask[:, :, 5, 9] = 1  # one pixel: its 2×2 block is repainted at 16×16
    cond = editor.inpainting_condition(image, mask)
    small_mask = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    small_mask[:, :, 2, 4] = 1
    small_image = image.view(2, 3, 16, 2, 16, 2).mean(dim=(3, 5))  # area resize: 2×2 means
    torch.testing.assert_close(cond["mask"], small_mask, rtol=0, atol=0)
    torch.testing.assert_close(cond["image"], small_image * (1 - small_mask), rtol=0, atol=1e-15)
    same = editor.inpainting_condition(image[..., :16, :16], mask[..., :16, :16])
    assert torch.equal(same["image"], image[..., :16, :16] * (1 - mask[..., :16, :16]))
    with pytest.raises(ValueError, match="no image condition"):
        UNet(UNetConfig(**BASE)).inpainting_condition(image, mask)
