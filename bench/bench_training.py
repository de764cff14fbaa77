"""Training throughput of the base UNet (32×32) and the SR UNet (32→64), one forward + backward +
AdamW step on a batch of 16: float32 vs bfloat16 autocast, diffrt's fused attention vs torch's
scaled_dot_product_attention in the same model. Times per step; images/s = 16 / time.

    python -m pytest bench/bench_training.py --benchmark-only
"""

import pytest
import torch
import torch.nn.functional as F

from diffrt.models import unet as unet_module
from diffrt.models.unet import UNet, UNetConfig

from .conftest import record

BATCH = 16
MODELS = {
    "base 32px": dict(image_size=32, base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                      attention_resolutions=(16, 8), head_dim=32, context_dim=128, pooled_text_dim=128,
                      cond_image=True, prediction_type="v_prediction"),
    "sr 32->64px": dict(image_size=64, base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2,
                        attention_resolutions=(16,), head_dim=32, context_dim=128, pooled_text_dim=128,
                        cond_image=True, low_res_channels=3, prediction_type="v_prediction"),
}


def sdpa(q, k, v, *, key_padding_mask=None, scale=None):
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _inputs(cfg, g):
    s = cfg.image_size
    cond = {"context": torch.randn(BATCH, 32, 128, generator=g), "context_mask": torch.ones(BATCH, 32, dtype=torch.bool),
            "pooled": torch.randn(BATCH, 128, generator=g), "image": torch.randn(BATCH, 3, s, s, generator=g),
            "mask": torch.ones(BATCH, 1, s, s)}
    if cfg.low_res_channels:
        cond.update(low_res=torch.randn(BATCH, 3, s // 2, s // 2, generator=g), noise_level=torch.zeros(BATCH, dtype=torch.long))
    return torch.randn(BATCH, 3, s, s, generator=g), torch.randint(0, 1000, (BATCH,), generator=g), cond


@pytest.mark.parametrize("attention", ["diffrt", "torch SDPA"])
@pytest.mark.parametrize("precision", ["float32", "bf16 autocast"])
@pytest.mark.parametrize("name", list(MODELS))
def bench_train_step(benchmark, threads, monkeypatch, name, precision, attention):
    if attention != "diffrt":
        monkeypatch.setattr(unet_module.ops, "attention", sdpa)
    cfg = UNetConfig(**MODELS[name])
    torch.manual_seed(0)
    model = UNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, cond = _inputs(cfg, torch.Generator().manual_seed(0))
    target = torch.randn_like(x)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32"):
            loss = F.mse_loss(model(x, t, cond).float(), target)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, autotuning)
    benchmark.pedantic(step, rounds=3, iterations=1)
    impl = "diffrt" if attention == "diffrt" else "UNet with torch SDPA"
    record(benchmark, "UNet training step, batch 16", f"{name} {precision} {threads}thr", impl)
