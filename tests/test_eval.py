"""The EditBench-style benchmark and its metrics on ground truth, where the answers are known."""

import pytest
import torch

from diffrt import eval as ev
from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def items():
    return ev.editbench(60, resolution=64)


def test_benchmark_is_deterministic_and_covers_every_mask_size(items):
    again = ev.editbench(5, resolution=64)
    assert all(torch.equal(a.image, b.image) and a.prompts == b.prompts for a, b in zip(items[:5], again))
    assert {it.mask_size for it in items} == set(ev.MASK_SIZES)
    for it in items[:10]:
        assert it.labels["colour"] in it.prompts["simple"] and it.prompts["simple"].split()[-1] in it.prompts["rich"]
        assert (it.object_mask.float() <= it.mask).all()  # the exact object lies inside its box


def test_colour_accuracy_on_ground_truth(items):
    solid = [it for it in items if it.labels["texture"] == "solid"]
    assert len(solid) >= 5
    images = torch.stack([it.image for it in solid])
    regions = torch.stack([it.object_mask for it in solid])
    assert ev.colour_accuracy(images, regions, [it.labels["colour"] for it in solid]) == 1.0
    assert ev.colour_accuracy(images, regions, ["not a colour"] * len(solid)) == 0.0


def test_background_psnr_and_mask_iou(items):
    original = torch.stack([it.image for it in items[:4]])
    mask = torch.stack([it.mask for it in items[:4]])
    edited = original + mask * 0.7  # changes only inside the mask
    assert (ev.background_psnr(original, edited, mask) == 100.0).all()
    noisy = original + 0.1 * torch.randn_like(original)
    assert (ev.background_psnr(original, noisy, mask) < 40).all()
    assert torch.equal(ev.mask_iou(mask, mask), torch.ones(4))
    half = mask.clone()
    half[..., ::2] = 0  # every other column
    assert (ev.mask_iou(half, mask) < 1).all()
    assert ev.by_mask_size([1.0] * len(items), items)["all"] == 1.0


def test_clip_metrics_run_and_rank():
    tok = Tokenizer.train(["a red circle", "a blue square"], vocab_size=340, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=32, text_layers=1, text_heads=4,
                           image_size=32, patch_size=8, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    scores = ev.clip_score(clip, tok, images, ["a red circle", "a blue square"])
    assert scores.shape == (2,) and (scores >= 0).all() and (scores <= 2.5).all()
    r = ev.clip_r_precision(clip, tok, images, ["a red circle", "a red circle"], [["a red circle"], ["a red circle"]])
    assert r == 1.0  # ties go to the image's own prompt, listed first
