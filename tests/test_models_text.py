"""Tokenizer, CLIP and the prior: shapes, masks, any prompt tokenises, save/load round trips and errors."""

import json

import pytest
import torch

from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.prior import DiffusionPrior, PriorConfig
from diffrt.models.tokenizer import Tokenizer, TruncationWarning

CAPTIONS = ["a red circle on a blue background", "two green squares", "a large striped yellow triangle"]


@pytest.fixture
def tok():
    return Tokenizer.train(CAPTIONS, vocab_size=400, max_length=16)


def small_clip(tok):
    return CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=16, text_width=32, text_layers=2, text_heads=4,
                           image_size=16, patch_size=4, image_width=32, image_layers=2, image_heads=4, embed_dim=24))


def test_any_prompt_tokenises_and_round_trips(tok):
    for text in ["a red circle", "A RED Circle!!", "zebra", "ünïcödé 日本語 🙂", "", "   "]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids).replace(" ", "") == "".join(text.lower().split()).replace(" ", "")
    batch = tok(["a red circle", ""])
    assert batch.ids.shape == (2, 16) and batch.mask[1].sum() == 2  # <bos> <eos>
    assert batch.ids[0, 0] == tok.bos_id and batch.ids[0, batch.eos_index[0]] == tok.eos_id


def test_truncation_is_reported(tok):
    with pytest.warns(TruncationWarning, match="truncated"):
        batch = tok(["a red circle " * 10, "a red circle"])
    assert batch.truncated == [True, False]
    assert batch.ids[0, -1] == tok.eos_id and batch.mask[0].all()


def test_tokenizer_save_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.vocab == tok.vocab and again.max_length == tok.max_length
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_clip_shapes_masks_and_loss(tok):
    clip = small_clip(tok)
    batch = tok(CAPTIONS)
    text, states = clip.encode_text(batch.ids, batch.mask)
    assert text.shape == (3, 24) and states.shape == (3, 16, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    # padding does not change the pooled embedding: the same prompt alone or beside a longer one
    alone, _ = clip.encode_text(*[t[:1] for t in (batch.ids, batch.mask)])
    torch.testing.assert_close(alone, text[:1], rtol=1e-5, atol=1e-5)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    logits, loss = clip(batch.ids, batch.mask, images)
    assert logits.shape == (3, 3) and loss.item() > 0
    loss.backward()
    assert clip.logit_scale.grad is not None
    with pytest.raises(ValueError, match="images must have shape"):
        clip.encode_image(torch.zeros(1, 3, 32, 32))


def test_prior_forward(tok):
    clip = small_clip(tok)
    batch = tok(CAPTIONS[:2])
    text, states = clip.encode_text(batch.ids, batch.mask)
    prior = DiffusionPrior(PriorConfig(embed_dim=24, text_width=32, max_length=16, width=32, layers=2, heads=4))
    out = prior(torch.randn(2, 24), torch.tensor([10, 900]), {"text_tokens": states, "text_mask": batch.mask,
                                                             "text_embed": text})
    assert out.shape == (2, 24) and prior.prediction_type == "sample"


@pytest.mark.parametrize("make", ["clip", "prior"])
def test_save_load_round_trip_is_bit_exact(tok, tmp_path, make):
    model = small_clip(tok) if make == "clip" else DiffusionPrior(PriorConfig(embed_dim=8, text_width=8, max_length=4,
                                                                              width=16, layers=1, heads=2))
    model.save_pretrained(tmp_path)
    again = type(model).from_pretrained(tmp_path)
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_load_errors_name_the_file(tok, tmp_path):
    model = small_clip(tok)
    model.save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*damaged or truncated"):
        CLIP.from_pretrained(tmp_path)
    weights.write_bytes(data)
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "text_layers": 3}))
    with pytest.raises(ValueError, match="model.safetensors.*missing"):
        CLIP.from_pretrained(tmp_path)
    config.write_text(json.dumps({**cfg, "text_width": 48}))
    with pytest.raises(ValueError, match="model.safetensors"):
        CLIP.from_pretrained(tmp_path)
    config.write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(ValueError, match="config.json.*unknown"):
        CLIP.from_pretrained(tmp_path)
    config.unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIP.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config.json.*DiffusionPrior"):
        model.save_pretrained(tmp_path)
        DiffusionPrior.from_pretrained(tmp_path)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(text_width=30, text_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        PriorConfig(width=30, heads=4)
