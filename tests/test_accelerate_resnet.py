"""accelerate(pipe) swaps diffusers' ResnetBlock2D for a drop-in that runs norm → SiLU as one diffrt group_norm
pass, and diffusers' Timesteps for diffrt.ops.timestep_embedding: same results as float64 references, the
configurations it cannot reproduce left and reported, undo bitwise.

Tolerances (tests._helpers.assert_close_to_ref at float32): a UNet's output against the same UNet run in
float64 (with float64 timestep features, the exact math) with scale = max |output| (64·eps·scale ≈ 7.6e-6·scale;
measured ≤ 1e-6 for both the accelerated and the untouched float32 UNet); a single block with scale = 4·max |out|
(its convolutions sum a few hundred terms of that size).
"""

import copy
import functools

import pytest
import torch

from diffrt.integrations import diffusers_norms
from diffrt.integrations.diffusers import accelerate, undo
from diffrt.integrations.diffusers_norms import DiffrtGroupNorm, diffrt_resnet_block, diffrt_timesteps
from diffrt.ops.norm import timestep_embedding_ref
from tests._helpers import assert_close_to_ref

diffusers = pytest.importorskip("diffusers")
from diffusers.models.embeddings import Timesteps  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

BASE = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, norm_num_groups=4, attention_head_dim=8)
CONFIGS = {
    "sd": {},
    "scale_shift": dict(resnet_time_scale_shift="scale_shift"),
    # DeepFloyd IF / unCLIP style: resnets that down- and upsample inside the block, skip_time_act, output scale
    "resnet_updown": dict(down_block_types=("SimpleCrossAttnDownBlock2D", "ResnetDownsampleBlock2D"),
                          up_block_types=("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"),
                          mid_block_type="UNetMidBlock2DSimpleCrossAttn", resnet_skip_time_act=True,
                          resnet_out_scale_factor=2 ** -0.5, flip_sin_to_cos=False, freq_shift=1),
}


def tiny_unet(**overrides):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**{**BASE, **overrides}).eval()


class Pipe:
    """What accelerate needs of a pipeline: a UNet2DConditionModel at .unet."""

    def __init__(self, unet):
        self.unet = unet


def inputs(unet, channels_last=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cond = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([999, 17]), cond  # t ≈ 10³: where float32 phases are least exact


def call(unet, x, t, cond):
    with torch.no_grad():
        return unet(x, t, cond).sample


def float64_reference(unet, x, t, cond):
    """The UNet's math in float64, timestep features included (diffusers computes those in float32 whatever
    the UNet's dtype)."""
    ref = copy.deepcopy(unet).double()
    proj = ref.time_proj
    proj.forward = lambda ts: timestep_embedding_ref(ts, proj.num_channels, bool(proj.flip_sin_to_cos),
                                                      proj.downscale_freq_shift, proj.scale, dtype=torch.float64)
    return call(ref, x.double(), t, cond.double())


def count_fused_calls(monkeypatch):
    """Counts diffrt group_norm calls with activation="silu" made by the drop-in."""
    calls = []

    @functools.wraps(diffusers_norms.group_norm)
    def counting(*args, **kwargs):
        calls.append(kwargs.get("activation"))
        return group_norm(*args, **kwargs)

    group_norm = diffusers_norms.group_norm
    monkeypatch.setattr(diffusers_norms, "group_norm", counting)
    return calls


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_accelerated_unet_matches_float64_reference_and_undo_is_exact(name, channels_last, monkeypatch):
    unet = tiny_unet(**CONFIGS[name])
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    x, t, cond = inputs(unet, channels_last)
    want = call(unet, x, t, cond)
    ref = float64_reference(unet, x, t, cond)
    scale = ref.abs().max().item()
    assert_close_to_ref(want, ref, dtype=torch.float32, scale=scale)  # the tolerance holds for diffusers itself
    blocks = {n: m for n, m in unet.named_modules() if type(m) is ResnetBlock2D}
    kinds = {n: type(m) for n, m in unet.named_modules()}

    pipe = Pipe(unet)
    accelerate(pipe)
    report = pipe._diffrt_report
    assert {f"unet.{n}" for n in blocks} <= set(report.modules_swapped) and "unet.time_proj" in report.modules_swapped
    assert not report.modules_left
    assert all(type(unet.get_submodule(n)).__name__ == "DiffrtResnetBlock2D" for n in blocks)
    assert all(isinstance(unet.get_submodule(n), ResnetBlock2D) for n in blocks)  # isinstance checks still hold
    assert type(unet.time_proj).__name__ == "DiffrtTimesteps"
    assert type(unet.time_embedding).__name__ == "DiffrtTimestepEmbedding" and "unet.time_embedding" in report.modules_swapped
    if name == "resnet_updown":  # the resnets with up/down sampling inside are among those swapped
        assert any(blocks[n].down for n in blocks) and any(blocks[n].up for n in blocks)
    calls = count_fused_calls(monkeypatch)
    got = call(unet, x, t, cond)
    # norm1 → SiLU in each block; norm2 → SiLU too unless a scale and shift come between them
    assert calls.count("silu") == len(blocks) * (1 if name == "scale_shift" else 2)
    assert_close_to_ref(got, ref, dtype=torch.float32, scale=scale)

    undo(pipe)
    assert {n: type(m) for n, m in unet.named_modules()} == kinds
    assert all(unet.get_submodule(n) is m for n, m in blocks.items())
    assert torch.equal(call(unet, x, t, cond), want)


def test_vae_resnets_all_swapped_and_decode_matches_float64_reference():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=4, layers_per_block=1).eval()
    pipe = Pipe(tiny_unet())
    pipe.vae = vae
    blocks = {n: m for n, m in vae.named_modules() if type(m) is ResnetBlock2D}
    assert {m.time_embedding_norm for m in blocks.values()} == {"default", "group"}  # the decoder's say "group"
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = vae.decode(z).sample
        ref = copy.deepcopy(vae).double().decode(z.double()).sample
    accelerate(pipe)
    assert {f"vae.{n}" for n in blocks} <= set(pipe._diffrt_report.modules_swapped)
    assert not pipe._diffrt_report.modules_left
    with torch.no_grad():
        got = vae.decode(z).sample
    assert_close_to_ref(got, ref, dtype=torch.float32, scale=4 * ref.abs().max().item())
    undo(pipe)
    with torch.no_grad():
        assert torch.equal(vae.decode(z).sample, want)


def test_blocks_with_another_activation_are_left_and_reported():
    unet = tiny_unet(act_fn="mish")
    x, t, cond = inputs(unet)
    want = call(unet, x, t, cond)
    blocks = [n for n, m in unet.named_modules() if type(m) is ResnetBlock2D]
    pipe = Pipe(unet)
    accelerate(pipe)
    report = pipe._diffrt_report
    # the time embedding's activation is the UNet's act_fn too: it is left with the blocks
    assert set(report.modules_left) == {f"unet.{n}" for n in blocks} | {"unet.time_embedding"}
    assert "activation other than SiLU" in report.modules_left.pop("unet.time_embedding")
    assert all("declined this ResnetBlock2D" in why for why in report.modules_left.values())
    assert all(f"left unet.{n}" in str(report) for n in blocks)
    assert all(type(unet.get_submodule(n)) is ResnetBlock2D for n in blocks)
    assert all(type(unet.get_submodule(f"{n}.norm1")) is DiffrtGroupNorm for n in blocks)  # its norms still swapped
    assert_close_to_ref(call(unet, x, t, cond), want, dtype=torch.float32, scale=want.abs().max().item())
    undo(pipe)
    assert torch.equal(call(unet, x, t, cond), want)


def block(**overrides):
    torch.manual_seed(0)
    config = dict(in_channels=8, out_channels=12, temb_channels=6, groups=4, eps=1e-6)
    return ResnetBlock2D(**{**config, **overrides}).eval()


def block_inputs(b, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, b.in_channels, 6, 6, generator=g) * 3 + 1
    temb = torch.randn(2, 6, generator=g) if b.time_emb_proj is not None else None
    return x, temb


def check_block(b, x, temb):
    """The drop-in for b against b's math in float64; returns the drop-in."""
    fused = diffrt_resnet_block(b)
    assert fused is not None
    with torch.no_grad():
        ref = copy.deepcopy(b).double()(x.double(), None if temb is None else temb.double())
        got = fused(x, temb)
    assert got.dtype == x.dtype and got.shape == ref.shape
    assert_close_to_ref(got, ref, dtype=torch.float32, scale=4 * ref.abs().max().item())
    return fused


@pytest.mark.parametrize("overrides", [
    {}, dict(time_embedding_norm="scale_shift"), dict(temb_channels=None), dict(skip_time_act=True),
    dict(output_scale_factor=2 ** -0.5, conv_shortcut=True), dict(out_channels=8), dict(groups_out=2),
    dict(down=True), dict(up=True), dict(down=True, kernel="fir"), dict(up=True, kernel="sde_vp"),
    dict(down=True, kernel="sde_vp"), dict(up=True, kernel="fir"), dict(conv_shortcut_bias=False),
    dict(temb_channels=None, time_embedding_norm="group"),  # a VAE decoder's: any name is accepted without temb
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_block_reproduces_diffusers_forward(overrides):
    b = block(**overrides)
    check_block(b, *block_inputs(b))


def test_block_warns_of_the_deprecated_scale_argument_as_diffusers_does():
    b = block()
    fused = diffrt_resnet_block(b)
    x, temb = block_inputs(b)
    for module in (b, fused):
        with pytest.warns(FutureWarning, match="The `scale` argument is deprecated"):
            module(x, temb, scale=0.5)


def test_block_gradients_match_diffusers():
    b = block(time_embedding_norm="scale_shift", down=True).train()  # dropout 0: training is deterministic
    fused = diffrt_resnet_block(b)
    x, temb = block_inputs(b)
    grads = []
    for module in (b, fused):
        xg, tg = x.clone().requires_grad_(), temb.clone().requires_grad_()
        module.zero_grad()
        module(xg, tg).square().sum().backward()
        grads.append([xg.grad, tg.grad, b.norm1.weight.grad.clone(), b.conv1.weight.grad.clone()])
    for got, want in zip(grads[1], grads[0]):
        assert_close_to_ref(got, want, dtype=torch.float32, scale=4 * want.abs().max().item())


def test_block_takes_norms_swapped_before_or_after_it():
    b = block()
    x, temb = block_inputs(b)
    with torch.no_grad():
        want = b(x, temb)
    # before: norms already DiffrtGroupNorm (accepted and fused)
    b.norm1, b.norm2 = DiffrtGroupNorm.from_module(b.norm1), DiffrtGroupNorm.from_module(b.norm2)
    fused = check_block(b, x, temb)

    # after: a norm put on the original block reaches the drop-in (they share their submodules) and, when it is
    # not a GroupNorm diffrt can fuse, runs as diffusers runs it
    class Shifted(torch.nn.GroupNorm):
        def forward(self, h):
            return super().forward(h) + 1.0

    shifted = Shifted(b.norm1.num_groups, b.norm1.num_channels, eps=b.norm1.eps)
    shifted.load_state_dict(b.norm1.state_dict())
    b.norm1 = shifted
    assert fused.norm1 is shifted
    with torch.no_grad():
        got, expected = fused(x, temb), b(x, temb)
    assert not torch.allclose(expected, want, atol=1e-3)  # the shift changes diffusers' result ...
    assert_close_to_ref(got, expected, dtype=torch.float32, scale=4 * expected.abs().max().item())  # ... and ours


def test_block_declines_what_it_cannot_reproduce():
    assert diffrt_resnet_block(block(non_linearity="mish")) is None
    assert diffrt_resnet_block(block(non_linearity="gelu")) is None
    assert diffrt_resnet_block(torch.nn.GroupNorm(2, 4)) is None  # not a ResnetBlock2D

    class MyBlock(ResnetBlock2D):
        pass

    assert diffrt_resnet_block(MyBlock(in_channels=8, temb_channels=6, groups=4)) is None  # a subclass
    b = block()
    b.norm2 = torch.nn.LayerNorm(12)
    assert diffrt_resnet_block(b) is None  # a norm that is not a GroupNorm
    b = block()
    b.norm1.register_forward_hook(lambda module, args, out: out * 2)
    assert diffrt_resnet_block(b) is None  # a hook a fused call would skip
    for name in ("ada_group", "spatial"):  # names of the conditioned norms, set after construction
        b = block()
        b.time_embedding_norm = name
        assert diffrt_resnet_block(b) is None


@pytest.mark.parametrize("dim, flip, shift, scale", [(32, True, 0, 1), (32, False, 1, 1), (7, True, 1, 1),
                                                     (16, False, 0.5, 1000)])
@pytest.mark.parametrize("t_dtype", [torch.int64, torch.float32, torch.float64])
def test_timesteps_match_the_float64_reference_in_diffusers_dtype(dim, flip, shift, scale, t_dtype):
    module = Timesteps(dim, flip, shift, scale)
    fused = diffrt_timesteps(module)
    assert type(fused).__name__ == "DiffrtTimesteps" and isinstance(fused, Timesteps)
    t = torch.tensor([0, 1, 17, 500, 999]).to(t_dtype)
    got = fused(t)
    want = module(t)
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    ref = timestep_embedding_ref(t, dim, flip, shift, scale, dtype=torch.float64)
    assert_close_to_ref(got, ref, dtype=torch.float32, scale=1.0)
    # diffusers rounds the phase scale·t·freq to float32 first: off by up to |phase|·eps/2 ≈ 6e-5 at 10³
    assert_close_to_ref(want, ref, dtype=torch.float32, scale=1.0, slack=1e3 * scale * torch.finfo(torch.float32).eps)


def test_timesteps_declined_where_diffusers_divides_by_zero():
    assert diffrt_timesteps(Timesteps(8, True, 4)) is None  # frequencies divide by dim // 2 − shift = 0
    assert diffrt_timesteps(Timesteps(8, True, float("nan"))) is None

    class MyTimesteps(Timesteps):
        pass

    assert diffrt_timesteps(MyTimesteps(8, True, 0)) is None

