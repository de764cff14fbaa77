"""DiffrtAttnProcessor reproduces diffusers' AttnProcessor2_0 (skipped when diffusers is not installed)."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

from diffrt.integrations.diffusers import DiffrtAttnProcessor, key_padding_from_attention_mask  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    ).eval()


def assert_close(a, b, magnitude_of):
    tol = 256 * EPS32 * max(1.0, magnitude_of.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol, f"max difference {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "padding_mask"])
def test_unet_output_matches_default_processor(with_mask):
    unet = tiny_unet()
    sample = torch.randn(2, 4, 16, 16)
    text = torch.randn(2, 77, 32)
    kwargs = {}
    if with_mask:
        mask = torch.ones(2, 77)
        mask[0, 20:] = 0  # a prompt padded after 20 tokens
        kwargs["encoder_attention_mask"] = mask
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        expected = unet(sample, 10, text, **kwargs).sample
        unet.set_attn_processor(DiffrtAttnProcessor())
        got = unet(sample, 10, text, **kwargs).sample
    assert_close(got, expected, expected)


def test_unet_bfloat16_close_to_float32():
    unet = tiny_unet()
    sample = torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 77, 32)
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        reference = unet(sample, 10, text).sample
        low = unet.to(torch.bfloat16)
        low.set_attn_processor(AttnProcessor2_0())
        sdpa_bf16 = low(sample.bfloat16(), 10, text.bfloat16()).sample.float()
        low.set_attn_processor(DiffrtAttnProcessor())
        ours_bf16 = low(sample.bfloat16(), 10, text.bfloat16()).sample.float()
    # bfloat16 end to end: no further from float32 than twice diffusers' own bfloat16 run.
    assert (ours_bf16 - reference).abs().max() <= 2 * (sdpa_bf16 - reference).abs().max()


def test_group_norm_residual_rescale_and_mask():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8, norm_num_groups=4, residual_connection=True,
                     rescale_output_factor=2.0, bias=True).eval()
    x = torch.randn(2, 32, 6, 5)  # 4-D input: (B, C, H, W)
    mask = torch.zeros(2, 1, 30)
    mask[1, :, 7:] = -10000.0  # additive key-padding bias, as UNets build it
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        expected = attn(x, attention_mask=mask)
        attn.set_processor(DiffrtAttnProcessor())
        got = attn(x, attention_mask=mask)
    assert_close(got, expected, expected)


def test_general_mask_runs_like_sdpa():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(2, 10, 16), torch.randn(2, 12, 8)
    soft_bias = torch.randn(2, 10, 12)  # per-query soft bias: not a key-padding mask
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        expected = attn(x, ctx, attention_mask=soft_bias)
        attn.set_processor(DiffrtAttnProcessor())
        got = attn(x, ctx, attention_mask=soft_bias)
    assert_close(got, expected, expected)


def test_key_padding_conversion():
    bias = torch.tensor([[0.0, 0.0, -10000.0], [-10000.0, -10000.0, -10000.0]])[:, None, None, :]
    keep = key_padding_from_attention_mask(bias, batch=2, heads=1)
    assert keep.tolist() == [[True, True, False], [True, True, True]]  # constant row: shift-invariant
    assert key_padding_from_attention_mask(torch.tensor([[0.0, -1.0]])[:, None, None, :], 1, 1) is None


def test_gradients_flow_through_processor():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(2, 9, 16, requires_grad=True)
    attn.set_processor(AttnProcessor2_0())
    attn(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    attn.set_processor(DiffrtAttnProcessor())
    attn(x).sum().backward()
    assert_close(x.grad, expected, expected)


def tiny_added_kv_unet():
    """UnCLIP-style "simple cross-attention" blocks: the text's keys/values come from add_k_proj / add_v_proj."""
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "SimpleCrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "padding_mask"])
def test_added_kv_unet_matches_diffusers_processor(with_mask):
    from diffusers.models.attention_processor import AttnAddedKVProcessor2_0

    unet = tiny_added_kv_unet()
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32)
    kwargs = {}
    if with_mask:
        mask = torch.ones(2, 7)
        mask[0, 3:] = 0
        kwargs["encoder_attention_mask"] = mask
    with torch.no_grad():
        assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnAddedKVProcessor2_0"}
        expected = unet(sample, 10, text, **kwargs).sample
        unet.set_attn_processor(DiffrtAttnProcessor())
        got = unet(sample, 10, text, **kwargs).sample
        unet.set_attn_processor(AttnAddedKVProcessor2_0())
    assert_close(got, expected, expected)


@pytest.mark.parametrize("only_cross_attention,self_attention", [(False, False), (True, False), (False, True)],
                         ids=["text_and_own_keys", "text_keys_only", "no_text"])
def test_added_kv_attention_layer_matches_diffusers(only_cross_attention, self_attention):
    from diffusers.models.attention_processor import AttnAddedKVProcessor

    torch.manual_seed(1)
    attn = Attention(query_dim=32, heads=4, dim_head=8, added_kv_proj_dim=16 if not self_attention else 32,
                     norm_num_groups=8, only_cross_attention=only_cross_attention, bias=True, upcast_softmax=True,
                     out_bias=True, processor=AttnAddedKVProcessor()).eval()
    x = torch.randn(2, 32, 6, 5)
    ctx = None if self_attention else torch.randn(2, 9, 16)
    with torch.no_grad():
        expected = attn(x, ctx)
        attn.set_processor(DiffrtAttnProcessor())
        got = attn(x, ctx)
    assert got.shape == x.shape
    assert_close(got, expected, expected)


def test_joint_attention_is_refused_by_name():
    attn = Attention(query_dim=16, heads=2, dim_head=8, added_kv_proj_dim=16, context_pre_only=False)
    attn.set_processor(DiffrtAttnProcessor())
    with pytest.raises(NotImplementedError, match="add_q_proj"):
        attn(torch.randn(1, 4, 16), torch.randn(1, 3, 16))
