"""accelerate(pipe) runs a diffusers UNet's time_proj + time_embedding (sinusoid → Linear → SiLU → Linear) as one
diffrt.ops.timestep_mlp call: the same embedding as a float64 reference for every way a timestep is passed, the
features path of the module unchanged, what it cannot reproduce left and reported, undo exact.

Tolerance: the embedding against the float64 Timesteps + TimestepEmbedding at float32 (tests._helpers), scale
max |emb|; diffrt keeps e and h in float32 where diffusers rounds e to the weights' dtype."""

import copy

import pytest
import torch

from diffrt.integrations.diffusers import accelerate, undo
from diffrt.integrations.diffusers_norms import fuse_time_embedding
from diffrt.ops.norm import timestep_embedding_ref
from tests._helpers import assert_close_to_ref
from tests.test_accelerate_resnet import Pipe, call, float64_reference, inputs, tiny_unet

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def reference_embedding(unet, timesteps):
    """time_embedding(time_proj(t)) in float64."""
    proj, emb = unet.time_proj, copy.deepcopy(unet.time_embedding).double()
    features = timestep_embedding_ref(timesteps.reshape(-1), proj.num_channels, bool(proj.flip_sin_to_cos),
                                      proj.downscale_freq_shift, proj.scale, dtype=torch.float64)
    with torch.no_grad():
        return emb(features)


@pytest.mark.parametrize("timestep", [torch.tensor([999, 17]), torch.tensor(981), torch.tensor([3.5, 640.25]), 999, 17.5],
                         ids=["int64[2]", "0-d", "float32[2]", "int", "float"])
@pytest.mark.parametrize("config", [{}, dict(flip_sin_to_cos=False, freq_shift=1)], ids=["sd", "shift1"])
def test_fused_time_embedding_matches_float64_reference(timestep, config):
    unet = tiny_unet(**config)
    sample = torch.zeros(2, 4, 8, 8)
    restore, why = fuse_time_embedding(unet)
    assert why is None
    with torch.no_grad():
        got = unet.time_embedding(unet.get_time_embed(sample, timestep))
    t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).expand(2)
    want = reference_embedding(unet, t)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close_to_ref(got, want, dtype=torch.float32, scale=want.abs().max().item())
    restore()
    assert "get_time_embed" not in vars(unet) and type(unet.time_embedding).__name__ == "TimestepEmbedding"


def test_features_path_is_diffusers_forward():
    unet = tiny_unet()
    original = unet.time_embedding
    features = torch.randn(3, original.linear_1.in_features)
    with torch.no_grad():
        want = original(features)
        fuse_time_embedding(unet)
        assert torch.equal(unet.time_embedding(features), want)


def test_whole_unet_and_undo():
    unet = tiny_unet()
    x, t, cond = inputs(unet)
    want = call(unet, x, t, cond)
    ref = float64_reference(unet, x, t, cond)
    original = unet.time_embedding
    pipe = Pipe(unet)
    accelerate(pipe)
    assert "unet.time_embedding" in pipe._diffrt_report.modules_swapped
    calls = []
    mlp = type(unet.time_embedding).forward

    def counting(self, sample, condition=None):
        calls.append(sample.dim())
        return mlp(self, sample, condition)

    type(unet.time_embedding).forward = counting
    try:
        got = call(unet, x, t, cond)
    finally:
        type(unet.time_embedding).forward = mlp
    assert calls == [1]  # the UNet handed the fused module its timesteps, not features
    assert_close_to_ref(got, ref, dtype=torch.float32, scale=ref.abs().max().item())
    undo(pipe)
    assert unet.time_embedding is original and "get_time_embed" not in vars(unet)
    assert torch.equal(call(unet, x, t, cond), want)


@pytest.mark.parametrize("case", ["cond_proj", "post_act", "hook", "get_time_embed"])
def test_what_it_cannot_reproduce_is_left_and_reported(case):
    unet = tiny_unet(time_cond_proj_dim=8) if case == "cond_proj" else tiny_unet()
    if case == "post_act":
        unet.time_embedding.post_act = torch.nn.SiLU()
    elif case == "hook":
        unet.time_embedding.linear_2.register_forward_hook(lambda *args: None)
    elif case == "get_time_embed":
        unet.get_time_embed = lambda sample, timestep: unet.time_proj(timestep.expand(sample.shape[0]))
    x, t, cond = inputs(unet)
    want = call(unet, x, t, cond)
    pipe = Pipe(unet)
    accelerate(pipe)
    assert "unet.time_embedding" in pipe._diffrt_report.modules_left
    assert type(unet.time_embedding).__name__ == "TimestepEmbedding"
    assert_close_to_ref(call(unet, x, t, cond), want, dtype=torch.float32, scale=want.abs().max().item())
    undo(pipe)


def test_timestep_cond_without_cond_proj_is_an_error():
    unet = tiny_unet()
    fuse_time_embedding(unet)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        unet.time_embedding(torch.tensor([1.0, 2.0]), torch.zeros(2, 8))
