"""The clip kind's [clip] options: an attribute head on the image embedding (its targets from the
world's labels, its loss added to the contrastive one) and a frozen text tower, which keeps the text
encoder every UNet reads bitwise unchanged while the image tower trains."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffrt.cli import main
from diffrt.data import ProceduralDataset, collate
from diffrt.data.world import spatial_phrase
from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.tokenizer import Tokenizer
from diffrt.train.kinds import TEXT_TOWER, build
from diffrt.train.objectives import ATTRIBUTE_LABELS, CLIPObjective, CLIPWithAttributeHead, attribute_targets

from .test_cli_train import clip_run, write_config  # noqa: F401 — the tiny trained CLIP fixture


def test_attribute_targets_name_every_object_and_the_background():
    batch = collate([ProceduralDataset(32, seed=3)[i] for i in range(24)])
    targets = attribute_targets(batch["labels"], batch["background"])
    assert targets.shape == (24, len(ATTRIBUTE_LABELS)) and set(targets.unique().tolist()) <= {0.0, 1.0}
    for row, objects, background in zip(targets, batch["labels"], batch["background"]):
        on = {ATTRIBUTE_LABELS[i] for i in row.nonzero().flatten().tolist()}
        expected = {f"background_kind:{background['kind']}", *(f"background:{c}" for c in background["colours"])}
        for obj in objects:
            expected |= {f"colour:{obj['colour']}", f"shape:{obj['shape']}", f"size:{obj['size']}",
                         f"texture:{obj['texture']}"}
            if obj["count"] == 1:
                expected.add(f"cell:{obj['position']}")
        assert on == expected
    assert any(o["count"] > 1 for objects in batch["labels"] for o in objects)  # the cell rule was exercised
    cells = [label for label in ATTRIBUTE_LABELS if label.startswith("cell:")]
    assert len(cells) == len(set(cells)) == 9 and f"cell:{spatial_phrase([(0.1, 0.9)])}" in cells
    with pytest.raises(ValueError, match="label lists for"):
        attribute_targets(batch["labels"], batch["background"][:-1])


def test_the_objective_adds_the_weighted_attribute_loss():
    torch.manual_seed(0)
    samples = [ProceduralDataset(32, seed=4)[i] for i in range(6)]
    batch = collate(samples)
    tok = Tokenizer.train([s["prompt"] for s in samples], vocab_size=400, max_length=48)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=48, text_width=32, text_layers=1, text_heads=4,
                           image_size=32, patch_size=8, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    model = CLIPWithAttributeHead(clip)
    g = torch.Generator().manual_seed(0)
    loss, metrics = CLIPObjective(tok, 2.5)(model, batch, g)
    tokens = tok(list(batch["prompt"]))
    _, contrastive = clip(tokens.ids, tokens.mask, batch["image"])
    predicted = model.attribute_head(clip.encode_image(batch["image"]) * 16 ** 0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        predicted, attribute_targets(batch["labels"], batch["background"]))
    torch.testing.assert_close(loss, contrastive + 2.5 * bce)
    assert metrics["contrastive"] == pytest.approx(contrastive.item(), rel=1e-5)
    assert 0 <= metrics["attribute_recall"] <= 1 and 0 <= metrics["accuracy"] <= 1
    plain, plain_metrics = CLIPObjective(tok)(clip, batch, g)
    torch.testing.assert_close(plain, contrastive) and set(plain_metrics) == {"accuracy"}
    with pytest.raises(ValueError, match="attribute_loss_weight must be >= 0"):
        CLIPObjective(tok, -1.0)


def _frozen_config(tmp_path, clip_dir, extra=""):
    path = write_config(tmp_path, "clip")
    text = path.read_text()
    start = text.index("[model]\n")
    end = text.index("\n\n", start) if "\n\n" in text[start:] else len(text)
    text = text[:start] + text[end:]  # the architecture comes from [text] clip
    text += f'\n[text]\nclip = "{clip_dir}"\n\n[clip]\nfreeze_text = true\nattribute_loss_weight = 5.0\n{extra}'
    path.write_text(text)
    return path


def test_a_frozen_text_tower_stays_bitwise_and_the_image_tower_trains(tmp_path, clip_run):  # noqa: F811
    start = clip_run / "final"
    config = _frozen_config(tmp_path, start)
    run = tmp_path / "run"
    assert main(["train", "clip", "--config", str(config), "--run-dir", str(run), "--steps", "4"]) == 0
    before, after = load_file(start / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert set(before) == set(after)  # the head is not saved
    text = [k for k in before if k.split(".")[0] in TEXT_TOWER]
    assert len(text) > 5
    for key in text:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image_blocks"))
    assert (start / "vocab.json").read_text() == (run / "final" / "vocab.json").read_text()
    metrics = (run / "metrics.jsonl").read_text()
    assert "attribute_loss" in metrics and "contrastive" in metrics
    assert main(["export", "clip", "--run-dir", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert isinstance(CLIP.from_pretrained(tmp_path / "exported"), CLIP)


def test_frozen_text_needs_a_clip_and_no_model_table(tmp_path, clip_run):  # noqa: F811
    import tomllib

    config = tomllib.loads(_frozen_config(tmp_path, clip_run / "final").read_text())
    no_text = {k: v for k, v in config.items() if k != "text"}
    with pytest.raises(ValueError, match=r"freeze_text needs \[text\] clip"):
        build("clip", no_text)
    with pytest.raises(ValueError, match=r"\[model\] must be empty"):
        build("clip", {**config, "model": {"embed_dim": 16}})
    with pytest.raises(ValueError, match="differs from the image size"):
        build("clip", {**config, "data": {**config["data"], "resolution": 64}})
    with pytest.raises(ValueError, match="attribute_loss_weight must be >= 0"):
        build("clip", {**config, "clip": {"attribute_loss_weight": -1}})
    kind = build("clip", config)
    assert isinstance(kind.model, CLIPWithAttributeHead)
    frozen = {n for n, p in kind.model.clip.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in kind.model.clip.named_parameters() if n.split(".")[0] in TEXT_TOWER}
    assert np.isfinite(sum(p.sum().item() for p in kind.model.parameters()))
