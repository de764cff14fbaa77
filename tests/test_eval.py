"""The EditBench-style benchmark and its metrics on ground truth, where the answers are known: the
perfect edit scores 1, the unedited source and wrong edits score 0, the design is balanced."""

import collections
import inspect

import pytest
import torch

from diffrt import eval as ev
from diffrt.data.world import COLOUR_RGB
from diffrt.models.clip import CLIP, CLIPConfig
from diffrt.models.tokenizer import Tokenizer

FIELD = {"colour": "colour", "material": "texture", "shape": "shape", "size": "size", "count": "count"}


@pytest.fixture(scope="module")
def items():
    return ev.editbench(30, resolution=32)  # two design blocks: every (mask size, attribute) pair twice


def test_design_is_balanced_over_the_default_size():
    assert inspect.signature(ev.editbench).parameters["n"].default >= 240
    cells = [ev.design_cell(i) for i in range(ev.DEFAULT_ITEMS)]
    for key, values in (("mask_size", ev.MASK_SIZES), ("attribute", ev.ATTRIBUTES),
                        ("object_category", tuple(ev.OBJECT_CATEGORIES)), ("scene", ev.SCENES)):
        counts = collections.Counter(c[key] for c in cells)
        assert set(counts) == set(values) and len(set(counts.values())) == 1, (key, counts)
    pairs = collections.Counter((c["mask_size"], c["attribute"]) for c in cells)
    assert len(pairs) == 15 and set(pairs.values()) == {ev.DEFAULT_ITEMS // 15}


def test_items_are_deterministic_and_match_their_design(items):
    again = ev.editbench(5, resolution=32)
    assert all(torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.prompts == b.prompts
               for a, b in zip(items[:5], again))
    for it in items:
        cell = ev.design_cell(it.index)
        assert (it.mask_size, it.attribute, it.object_category, it.scene) == tuple(cell.values())
        assert ev.mask_size_class(it.mask) == it.mask_size
        assert it.labels["shape"] in ev.OBJECT_CATEGORIES[it.object_category]
        assert it.target_scene.background.kind == it.scene


def test_items_edit_exactly_the_tested_attribute(items):
    for it in items:
        changed = {a for a, f in FIELD.items() if it.labels[f] != it.source_labels[f]}
        assert changed == {it.attribute}, (it.index, changed)
        # both objects lie inside the mask, and nothing outside it changes
        assert (it.object_mask.float() <= it.mask).all() and (it.target_mask.float() <= it.mask).all()
        outside = (it.mask < 0.5).expand_as(it.image)
        assert torch.equal(it.image[outside], it.target_image[outside])
        assert torch.equal(it.clean_image[outside], it.image[outside])


def test_prompts_name_the_edit_and_distractors_the_alternatives(items):
    for it in items:
        assert it.labels["colour"] in it.prompts["simple"] and it.prompts["simple"].split()[-1] in it.prompts["rich"]
        if it.attribute in ("size", "material"):  # Mask-Simple names what is asked for
            assert str(it.labels[FIELD[it.attribute]]) in it.prompts["simple"]
        for p in ev.PROMPT_TYPES:
            wrong = it.distractors[p]
            assert len(wrong) == 2 and it.prompts[p] not in wrong and wrong[0] != wrong[1]
            assert wrong[0] == it.source_prompts[p]  # the edit not made


def test_perfect_edit_scores_one(items):
    for it in items:
        checks = ev.attribute_checks(it, it.target_image)
        assert all(checks[a] for a in ("colour", "shape", "count", it.attribute)), (it.index, checks)
    original = torch.stack([it.image for it in items])
    perfect = torch.stack([it.target_image for it in items])
    masks = torch.stack([it.mask for it in items])
    assert (ev.background_psnr(original, perfect, masks) == 100.0).all()  # capped: identical outside
    regions = torch.stack([it.edit_region for it in items])
    assert torch.equal(ev.mask_iou(regions, regions), torch.ones(len(items)))


def test_checks_read_the_unedited_source(items):
    """On the source image each check recovers the source's value: the edit not made scores 0."""
    for it in items:
        predicted = ev.predict_attributes(it, it.image)
        source = it.source_labels[FIELD[it.attribute]]
        assert predicted[it.attribute] == source, (it.index, it.attribute, predicted, source)
        assert not ev.attribute_checks(it, it.image)[it.attribute]


def test_wrong_colour_fill_scores_zero_and_right_colour_one(items):
    """Painting the whole mask one colour: only the asked-for colour passes the colour check (a fill
    in the background's colour paints nothing and fails every check)."""
    for it in items[::3]:
        region = (it.mask > 0.5).expand_as(it.target_image)
        for name, rgb in COLOUR_RGB.items():
            fill = torch.tensor(rgb, dtype=torch.float32)[:, None, None] / 127.5 - 1
            painted = torch.where(region, fill.expand_as(it.target_image), it.target_image)
            assert ev.attribute_checks(it, painted)["colour"] == (name == it.labels["colour"]), (it.index, name)


def test_an_erased_object_scores_zero(items):
    for it in items:
        assert not any(ev.attribute_checks(it, it.clean_image).values())
        assert ev.predict_attributes(it, it.clean_image) == {a: None for a in ev.ATTRIBUTES}


def test_dominant_colour_reads_whole_palettes():
    black, grey = COLOUR_RGB["black"], (124, 124, 124)  # a black object's stripes are grey, not white
    image = torch.tensor([black, grey] * 8, dtype=torch.float32).T.reshape(3, 4, 4) / 127.5 - 1
    region = torch.ones(1, 4, 4, dtype=torch.bool)
    assert ev.dominant_colour(image, region) == "black"
    assert ev.colour_accuracy(image[None], region[None], ["black"]) == 1.0
    assert ev.colour_accuracy(image[None], region[None], ["not a colour"]) == 0.0
    with pytest.raises(ValueError, match="region is empty"):
        ev.dominant_colour(image, torch.zeros(1, 4, 4, dtype=torch.bool))


def test_checks_validate_the_image(items):
    with pytest.raises(ValueError, match="item's shape"):
        ev.predict_attributes(items[0], torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        ev.editbench(0)
    with pytest.raises(ValueError, match="resolution"):
        ev.editbench(1, resolution=8)


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


def test_summarize_breaks_down_by_prompt_and_category():
    records = []
    for index, (attribute, size) in enumerate([("colour", "small"), ("shape", "large")]):
        for p, score in zip(ev.PROMPT_TYPES, (0.0, 0.5, 1.0)):
            records.append({"index": index, "prompt_type": p, "attribute": attribute, "object_category": "rare",
                            "scene": "plain", "mask_size": size, **{m: score for m in ev.METRICS},
                            "diffedit_iou": None})
    s = ev.summarize(records)
    assert s["overall"]["rich"]["clip_score"] == 0.5 and s["overall"]["all"]["n"] == 6
    assert s["overall"]["full"]["diffedit_iou"] is None  # skipped, not zero
    assert s["by_mask_size"]["full"]["small"]["attribute_accuracy"] == 1.0
    assert set(s["by_attribute"]["all"]) == {"colour", "shape"} and s["by_object_category"]["all"]["rare"]["n"] == 6


def test_clip_metrics_run_and_rank():
    tok = Tokenizer.train(["a red circle", "a blue square"], vocab_size=340, max_length=8)
    clip = CLIP(CLIPConfig(vocab_size=tok.vocab_size, max_length=8, text_width=32, text_layers=1, text_heads=4,
                           image_size=32, patch_size=8, image_width=32, image_layers=1, image_heads=4, embed_dim=16))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    scores = ev.clip_score(clip, tok, images, ["a red circle", "a blue square"])
    assert scores.shape == (2,) and (scores >= 0).all() and (scores <= 2.5).all()
    r = ev.clip_r_precision(clip, tok, images, ["a red circle", "a red circle"], [["a red circle"], ["a red circle"]])
    assert r == 1.0  # ties go to the image's own prompt, listed first
    hits = ev.clip_r_precision_hits(clip, tok, images, ["a red circle", "a blue square"],
                                    [["a blue square"], ["a red circle"]])
    assert hits.shape == (2,) and set(hits.tolist()) <= {0.0, 1.0}


@pytest.mark.slow
def test_default_benchmark_is_balanced():
    items = ev.editbench(resolution=32)
    assert len(items) >= 240
    for key, values in (("mask_size", ev.MASK_SIZES), ("attribute", ev.ATTRIBUTES),
                        ("object_category", tuple(ev.OBJECT_CATEGORIES)), ("scene", ev.SCENES)):
        counts = collections.Counter(getattr(it, key) for it in items)
        assert set(counts) == set(values) and len(set(counts.values())) == 1, (key, counts)
    assert all(ev.mask_size_class(it.mask) == it.mask_size for it in items)


def _result(name, scores, sizes):
    records = [{"index": i, "prompt_type": "simple", "mask_size": size, "clip_score": score}
               for i, (score, size) in enumerate(zip(scores, sizes))]
    return ev.EditBenchResult(name, {}, records, {})


def test_paired_difference_interval():
    from diffrt.eval.report import paired_difference

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    n = 200
    a = torch.rand(n, generator=gen, dtype=torch.float64)
    sizes = ["small" if i % 2 else "large" for i in range(n)]
    # a constant per-item shift: every resample has the same mean difference
    d, lo, hi = paired_difference(_result("a", a.tolist(), sizes), _result("b", (a + 0.25).tolist(), sizes),
                                  "clip_score", "simple")
    assert d == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    # pairing: a large common per-item spread cancels, so a small shift is still clear
    noise = 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    d, lo, hi = paired_difference(_result("a", (10 * a).tolist(), sizes),
                                  _result("b", (10 * a + 0.05 + noise).tolist(), sizes), "clip_score", "simple")
    assert lo > 0 and lo < d < hi and d == pytest.approx(0.05 + noise.mean().item())
    # pure noise: the interval covers 0 and has the width of the mean's 95 % range (±1.96 σ/√n)
    noise = torch.randn(n, generator=gen, dtype=torch.float64)
    d, lo, hi = paired_difference(_result("a", a.tolist(), sizes), _result("b", (a + noise).tolist(), sizes),
                                  "clip_score", "simple")
    half = 1.96 * noise.std().item() / n**0.5
    assert lo < d < hi and (hi - lo) / 2 == pytest.approx(half, rel=0.2)
    # one mask size only; unscored items and unknown cells
    b = (a + torch.where(torch.tensor([s == "small" for s in sizes]), 1.0, 0.0)).tolist()
    assert paired_difference(_result("a", a.tolist(), sizes), _result("b", b, sizes), "clip_score", "simple",
                             "small")[0] == pytest.approx(1.0)
    assert paired_difference(_result("a", a.tolist(), sizes), _result("b", b, sizes), "clip_score", "full") is None
    none = _result("a", [None] * n, sizes)
    assert paired_difference(none, none, "clip_score", "simple") is None
