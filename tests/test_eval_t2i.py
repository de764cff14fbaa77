"""`diffrt eval t2i`: its checks on the world's own renderings (right images pass, wrong ones fail the
right check) and one CLI run on a tiny bundle trained here."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffrt.eval import intervals as iv
from diffrt.eval import t2i as et
from diffrt.eval import t2i_report
from diffrt.models.bundle import DEFAULT_DIRECTORY, Bundle
from diffrt.cli import main
from diffrt.data.world import COLOUR_RGB, COLOURS, SceneSpec, caption_full, render, spatial_phrase

from .test_eval_cli import bundle_dir  # noqa: F401 — the tiny CLIP + base bundle fixture

N_ITEMS = 60  # per check about 50 ms an item at 32 px


@pytest.fixture(scope="module")
def items():
    return et.t2i_items(N_ITEMS, resolution=32)


def _accuracy(results, key):
    return float(np.mean([r["checks"][key] for r in results]))


def _rendered(scene: SceneSpec) -> torch.Tensor:
    return torch.from_numpy(render(scene, 32).image)


def test_items_are_single_object_world_scenes(items):
    assert [it.index for it in items] == list(range(N_ITEMS))
    assert all(len(it.scene.objects) == 1 and it.object.count == 1 for it in items)
    assert {it.labels["category"] for it in items} == {"shape", "glyph"}
    again = et.t2i_item(et.DEFAULT_BENCH_SEED, 5, 32)
    assert again.scene == items[5].scene and torch.equal(again.image, items[5].image)
    assert all(it.prompt == caption_full(it.scene) for it in items)


def test_ground_truth_passes_every_check(items):
    """The world's own renderings: background, colour and position at least 0.95 (each check's ceiling)."""
    for key in ("background", "colour", "position", "colour_position"):
        accuracy = float(np.mean([it.truth_checks[key] for it in items]))
        assert accuracy >= 0.95, (key, accuracy)
    # shape is scored on the shape-checkable items: most shapes, and glyphs large enough to read
    assert np.mean([it.shape_checkable for it in items]) >= 0.6


def test_wrong_colour_fails_the_colour_check(items):
    results = []
    for k, it in enumerate(items):
        obj, bg = it.object, it.scene.background
        others = [c for c in COLOURS if c not in bg.colours and c != obj.colour]
        other = others[k % len(others)]  # every colour, in turn
        swapped = dataclasses.replace(obj, colour=other, rgb=COLOUR_RGB[other])
        results.append(et.check(it.scene, _rendered(dataclasses.replace(it.scene, objects=(swapped,))),
                                shapes=False))
    assert _accuracy(results, "colour") <= 0.05
    assert _accuracy(results, "position") >= 0.95  # only the colour is wrong


def test_wrong_background_fails_the_background_check(items):
    results = []
    for k, it in enumerate(items):
        bg, obj = it.scene.background, it.object
        free = [c for c in COLOURS if c not in bg.colours and c != obj.colour]
        new = tuple(free[(k + j) % len(free)] for j in range(len(bg.colours)))
        wrong = dataclasses.replace(it.scene, background=dataclasses.replace(bg, colours=new))
        results.append(et.check(it.scene, _rendered(wrong), shapes=False))
    assert _accuracy(results, "background") <= 0.05


@pytest.mark.parametrize("axis", [-1, -2], ids=["mirrored", "upside-down"])
def test_flipped_image_fails_the_position_check(items, axis):
    """Flipping moves an object out of a left/right (top/bottom) cell; one in the middle stays there."""
    moved, stayed = [], []
    for it in items:
        x, y = it.object.positions[0]
        flipped = (1 - x, y) if axis == -1 else (x, 1 - y)
        result = et.check(it.scene, it.image.flip(axis), shapes=False)
        (moved if spatial_phrase([flipped]) != spatial_phrase([(x, y)]) else stayed).append(result)
    assert len(moved) >= N_ITEMS // 3
    assert _accuracy(moved, "position") <= 0.05
    assert _accuracy(moved, "colour") >= 0.95 and _accuracy(moved, "background") >= 0.95


def test_wrong_shape_fails_the_shape_check(items):
    readable = [it for it in items if it.shape_checkable and it.object.size != "small"]
    failed = []
    for it in readable:
        obj = it.object
        other = "cross" if obj.shape != "cross" else "circle"  # a silhouette unlike every other shape's
        image = _rendered(dataclasses.replace(it.scene, objects=(dataclasses.replace(obj, shape=other),)))
        failed.append(not et.check(it.scene, image)["checks"]["shape"])
    assert len(readable) >= N_ITEMS // 3 and np.mean(failed) >= 0.95


def test_position_inverts_the_caption():
    """Every cell's phrase comes back from a centre inside it, and a centre within the margin of a
    border matches both neighbours."""
    for x in (0.1, 0.5, 0.9):
        for y in (0.1, 0.5, 0.9):
            phrase = spatial_phrase([(x, y)])
            assert et.position_matches((x, y), phrase, 32)
            assert sum(et.position_matches((x, y), spatial_phrase([(a, b)]), 32)
                       for a in (0.1, 0.5, 0.9) for b in (0.1, 0.5, 0.9)) == 1
    assert et.position_matches((1 / 3 + 0.5 / 32, 0.5), "on the left", 32)
    assert et.position_matches((1 / 3 + 0.5 / 32, 0.5), "in the middle", 32)
    assert not et.position_matches((1 / 3 + 2 / 32, 0.5), "on the left", 32)


@pytest.mark.parametrize("attribute", et.SENSITIVITY_ATTRIBUTES)
def test_changed_scene_changes_one_attribute_of_the_caption(items, attribute):
    """The changed scene's caption differs from the original, and renders with only that attribute
    changed: the checks of the original scene fail on it for exactly that attribute's check."""
    for item in items[:20]:
        changed = et.changed_scene(item.scene, attribute)
        assert caption_full(changed) != item.prompt
        if attribute == "shape" and not item.shape_checkable:
            continue
        result = et.check(item.scene, _rendered(changed))["checks"]
        assert not result[attribute], (attribute, item.prompt, caption_full(changed))
    with pytest.raises(ValueError, match="attribute"):
        et.changed_scene(items[0].scene, "texture")


class _WordEncoder:
    """A text encoder that sees only the words in ``seen``: pooled = counts of those words."""

    def __init__(self, seen):
        self.seen = list(seen)

    def __call__(self, prompts):
        counts = torch.tensor([[1.0 + p.split().count(w) for w in self.seen] for p in prompts])
        return {"pooled": counts, "context": counts.unsqueeze(1).repeat(1, 2, 1),
                "context_mask": torch.ones(len(prompts), 2, dtype=torch.bool)}


def test_text_sensitivity_is_zero_for_dropped_attributes(items):
    """An encoder blind to position words shows 0 for position and > 0 for colour; a full one > 0 for all."""
    scenes = [it.scene for it in items[:30]]
    blind = et.text_sensitivity(_WordEncoder(COLOURS), scenes)
    assert blind["position"]["pooled"] == pytest.approx(0, abs=1e-12)
    assert blind["position"]["tokens"] == pytest.approx(0, abs=1e-12)
    assert blind["colour"]["pooled"] > 0.01 and blind["colour"]["tokens"] > 0.01
    words = sorted({w for sc in scenes for a in (None, *et.SENSITIVITY_ATTRIBUTES)
                    for w in caption_full(et.changed_scene(sc, a) if a else sc).split()})
    full = et.text_sensitivity(_WordEncoder(words), scenes)
    assert all(v["pooled"] > 0.001 for v in full.values()), full
    with pytest.raises(ValueError, match="at least one"):
        et.text_sensitivity(_WordEncoder(COLOURS), [])


def test_blank_image_has_no_object(items):
    blank = _rendered(dataclasses.replace(items[0].scene, objects=()))
    result = et.check(items[0].scene, blank)
    assert result["predicted"]["colour"] is None and result["predicted"]["area"] == 0
    assert result["checks"]["background"] and not any(result["checks"][k] for k in ("colour", "position", "shape"))


def test_checks_validate_their_inputs(items):
    with pytest.raises(ValueError, match=r"image must be a \(3, N, N\) tensor"):
        et.predict(torch.zeros(3, 32, 16), "plain")
    with pytest.raises(ValueError, match="kind must be one of"):
        et.predict(items[0].image, "fog")
    with pytest.raises(ValueError, match="exactly one object"):
        et.check(dataclasses.replace(items[0].scene, objects=()), items[0].image)
    with pytest.raises(ValueError, match="resolution must be in"):
        et.t2i_item(0, 0, 16)


def test_summary_breaks_down_by_kind_size_and_category():
    records = [{"labels": {"background": bg, "size": size, "category": cat}, "shape_checkable": ok,
                "checks": {"background": True, "colour": ok, "position": True, "colour_position": ok, "shape": ok}}
               for bg, size, cat, ok in [("plain", "small", "shape", True), ("noise", "large", "glyph", False)]]
    s = et.summarize(records)
    assert s["overall"]["colour"] == 0.5 and s["overall"]["shape"] == 1.0 and s["overall"]["n_shape"] == 1
    assert s["by_background"]["noise"]["colour"] == 0.0 and s["by_background"]["noise"]["shape"] is None
    assert set(s["by_size"]) == {"small", "large"} and set(s["by_category"]) == {"shape", "glyph"}


def test_t2i_cli_writes_the_report(tmp_path, bundle_dir, capsys):  # noqa: F811
    out = tmp_path / "report"
    assert main(["eval", "t2i", "--model", str(bundle_dir), "--items", "4", "--steps", "2", "--batch-size", "3",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "t2i.json").read_text())
    assert report["config"]["items"] == 4 and report["config"]["steps"] == 2 and report["config"]["guidance"] == 5.0
    assert report["config"]["dynamic_threshold"] is None and "dynamic thresholding off" in (out / "t2i.md").read_text()
    assert len(report["records"]) == 4 and report["summary"]["overall"]["n"] == 4
    for key in ("summary", "ground_truth"):
        assert {"overall", "by_background", "by_size", "by_category"} <= set(report[key])
        assert all(0 <= report[key]["overall"][c] <= 1 for c in ("background", "colour", "position", "colour_position"))
    md = (out / "t2i.md").read_text()
    assert "| Colour+position |" in md and "## By background kind" in md and "| ground truth |" in md
    assert set(report["text_sensitivity"]) == set(et.SENSITIVITY_ATTRIBUTES)
    assert all(0 <= v["pooled"] <= 2 for v in report["text_sensitivity"].values())
    assert "## What the text encoder passes on" in md and "| position |" in md
    assert set(report["shape_confusion"]) <= set(et.SHAPES)
    assert "medium+large" in report["summary"]["by_size_group_category"]
    with Image.open(out / "t2i_samples.png") as grid:
        assert grid.size[0] > 4 * 96
    assert str(out / "t2i.json") in printed


def test_t2i_cli_passes_the_dynamic_threshold(tmp_path, bundle_dir, capsys):  # noqa: F811
    out = tmp_path / "thresholded"
    assert main(["eval", "t2i", "--model", str(bundle_dir), "--items", "2", "--steps", "2", "--dynamic-threshold",
                 "0.9", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "t2i.json").read_text())["config"]["dynamic_threshold"] == 0.9
    assert "dynamic thresholding 0.9" in (out / "t2i.md").read_text()
    for bad in ("0", "1.5", "high"):
        with pytest.raises(SystemExit):
            main(["eval", "t2i", "--model", str(bundle_dir), "--dynamic-threshold", bad, "--out", str(out)])
        assert "--dynamic-threshold: expected a number in (0, 1]" in capsys.readouterr().err


def test_samples_do_not_depend_on_the_batch_size(bundle_dir):  # noqa: F811
    bundle = Bundle(bundle_dir)
    a = et.run_t2i(bundle, items=3, steps=1, batch_size=1, progress=False)
    b = et.run_t2i(bundle, items=3, steps=1, batch_size=3, progress=False)
    assert torch.allclose(a["images"], b["images"], atol=1e-5) and a["images"].shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        et.run_t2i(bundle, items=1, guidance=float("nan"))


def test_t2i_cli_fails_clearly(tmp_path, bundle_dir, capsys):  # noqa: F811
    args = ["eval", "t2i", "--out", str(tmp_path / "x"), "--quiet"]
    assert main(args + ["--model", str(bundle_dir), "--items", "0"]) == 2
    assert "--items must be >= 1" in capsys.readouterr().err
    assert main(args + ["--model", str(bundle_dir), "--guidance", "nan"]) == 2
    assert "--guidance must be a finite number" in capsys.readouterr().err
    assert main(args + ["--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    only_clip = tmp_path / "only_clip"
    only_clip.mkdir()
    (only_clip / "clip").symlink_to(bundle_dir / "clip")
    assert main(args + ["--model", str(only_clip)]) == 2
    assert "has no 'base' model" in capsys.readouterr().err
    if not (DEFAULT_DIRECTORY / "clip").is_dir():  # no --model: the shipped weights, when this build has them
        assert main(args) == 2
        assert "ships no default weights" in capsys.readouterr().err


# -- intervals and shape by size class ---------------------------------------------------------


def test_summary_gives_intervals_and_pools_medium_and_large():
    sizes = ["small"] * 4 + ["medium"] * 3 + ["large"] * 5
    shape_ok = [True, False, False, False, True, True, False, True, False, True, True, True]
    records = [{"labels": {"background": "plain", "size": size, "category": "shape"}, "shape_checkable": k != 5,
                "checks": {"background": True, "colour": k % 2 == 0, "position": True, "colour_position": k % 2 == 0,
                           "shape": ok}} for k, (size, ok) in enumerate(zip(sizes, shape_ok))]
    s = et.summarize(records)
    pooled = s["by_size_group"]["medium+large"]
    # medium + large: items 4-11, shape scored on the checkable ones (not 5): 4, 6-11 → 5 of 7 right
    assert pooled["n"] == 8 and pooled["n_shape"] == 7 and pooled["shape"] == pytest.approx(5 / 7)
    assert pooled["ci95"]["shape"] == pytest.approx(iv.wilson_interval(5, 7))
    assert s["by_size"]["small"]["shape"] == 0.25 and s["by_size"]["small"]["ci95"]["shape"] == iv.wilson_interval(1, 4)
    for cell in (s["overall"], *s["by_size"].values(), pooled):
        for check in et.CHECKS:
            lo, hi = cell["ci95"][check]
            assert lo <= cell[check] <= hi



def test_medium_and_large_split_into_shapes_and_glyphs_and_the_confusion_counts_reads():
    def record(size, cat, shape, read, checkable=True):
        return {"labels": {"background": "plain", "size": size, "category": cat, "shape": shape},
                "shape_checkable": checkable, "predicted": {"shape": read},
                "checks": {"background": True, "colour": True, "position": True, "colour_position": True,
                           "shape": read == shape}}
    records = [record("large", "shape", "star", "circle"), record("medium", "shape", "star", "star"),
               record("large", "shape", "circle", "circle"), record("medium", "shape", "cross", None),
               record("large", "glyph", "A", "circle"), record("medium", "glyph", "7", "7"),
               record("medium", "glyph", "K", "K", checkable=False),
               record("small", "shape", "star", "star")]  # small: outside the pooled group
    s = et.summarize(records)
    split = s["by_size_group_category"]["medium+large"]
    assert split["shape"]["n_shape"] == 4 and split["shape"]["shape"] == 0.5
    assert split["glyph"]["n"] == 3 and split["glyph"]["n_shape"] == 2 and split["glyph"]["shape"] == 0.5
    assert s["by_size_group"]["medium+large"]["shape"] == pytest.approx(3 / 6)
    confusion = et.shape_confusion(records)
    assert confusion == {"circle": {"circle": 1}, "star": {"circle": 1, "star": 1}, "cross": {"none": 1}}
    assert list(confusion) == [sh for sh in et.SHAPES if sh in confusion]  # rows in the world's order
    md = t2i_report.markdown_report({"config": {"items": 8, "bench_seed": 0, "resolution": 32, "spacing": "trailing",
                                                "steps": 1, "guidance": 3, "seed": 0, "dynamic_threshold": None},
                                     "summary": s, "ground_truth": s, "shape_confusion": confusion}, "m")
    assert "| medium+large, shapes | 0.500" in md and "| medium+large, glyphs | 0.500" in md
    assert "## Which shape is drawn" in md
    assert "| Prompted | circle | star | none | right |" in md and "| star | 1 | 1 | 0 | 0.50 |" in md

# -- two-object prompts ------------------------------------------------------------------------

N_PAIRS = 40


@pytest.fixture(scope="module")
def pairs():
    return et.two_object_items(N_PAIRS, resolution=32)


def test_pair_items_are_two_object_world_scenes_independent_of_count(pairs):
    assert [it.index for it in pairs] == list(range(N_PAIRS))
    assert all(len(it.scene.objects) == 2 and all(o.count == 1 for o in it.scene.objects) for it in pairs)
    assert all(it.prompt == caption_full(it.scene) for it in pairs)
    assert all(it.scene.objects[0].colour != it.scene.objects[1].colour for it in pairs)
    again = et.two_object_items(3, resolution=32)
    assert all(a.scene == b.scene and torch.equal(a.image, b.image) for a, b in zip(again, pairs))
    assert et.two_object_item(et.DEFAULT_BENCH_SEED, 17, 32).scene == pairs[17].scene
    assert et.two_object_item(et.DEFAULT_BENCH_SEED + 1, 17, 32).scene != pairs[17].scene
    # their own generators: no pair scene is a single-object item's scene with an object added
    singles = et.t2i_items(10, resolution=32)
    assert not any(p.scene.background == s.scene.background for p, s in zip(pairs, singles))


def test_implied_relation_reads_the_caption_cells():
    def scene(first, second):
        objects = tuple(dataclasses.replace(o, positions=(p,)) for o, p in
                        zip(et.two_object_item(0, 0, 32).scene.objects, (first, second)))
        return dataclasses.replace(et.two_object_item(0, 0, 32).scene, objects=objects)

    assert et.implied_relation(scene((0.2, 0.5), (0.8, 0.5))) == {"horizontal": "left of"}
    assert et.implied_relation(scene((0.5, 0.9), (0.5, 0.1))) == {"vertical": "below"}
    assert et.implied_relation(scene((0.9, 0.1), (0.5, 0.5))) == {"horizontal": "right of", "vertical": "above"}
    assert et.implied_relation(scene((0.4, 0.45), (0.6, 0.55))) == {}  # both in the middle cell
    assert et.relation_holds({"horizontal": "left of", "vertical": "above"}, (0.2, 0.2), (0.3, 0.9))
    assert not et.relation_holds({"horizontal": "left of", "vertical": "above"}, (0.2, 0.95), (0.3, 0.9))


def test_ground_truth_passes_the_pair_checks(pairs):
    """On the world's own renderings both colours and the relation hold in at least 0.9 of the items
    (the ceiling: at 32 px an object whose colour is near the background's can vanish)."""
    truth = [it.truth_checks for it in pairs]
    assert np.mean([t["both_colours"] for t in truth]) >= 0.9
    related = [t["relation"] for t, it in zip(truth, pairs) if it.relation]
    assert len(related) >= N_PAIRS * 0.8 and np.mean(related) >= 0.9
    assert all(t["relation"] is None for t, it in zip(truth, pairs) if not it.relation)
    assert np.mean([t["background"] for t in truth]) >= 0.95
    assert np.mean([ok for it in pairs for ok in it.shape_checkable]) >= 0.5


def _pair_image(scene, first, second) -> torch.Tensor:
    return _rendered(dataclasses.replace(scene, objects=(first, second)))


def test_wrong_second_colour_fails_only_that_object(pairs):
    results = []
    for k, it in enumerate(pairs):
        a, b = it.scene.objects
        free = [c for c in COLOURS if c not in it.scene.background.colours and c not in (a.colour, b.colour)]
        other = free[k % len(free)]
        image = _pair_image(it.scene, a, dataclasses.replace(b, colour=other, rgb=COLOUR_RGB[other]))
        results.append((it.truth_checks, et.check_pair(it.scene, image, shapes=False)["checks"]))
    passed_first = [r["colour_first"] for t, r in results if t["colour_first"]]
    assert np.mean(passed_first) >= 0.95
    assert np.mean([r["colour_second"] for _, r in results]) <= 0.05
    assert not any(r["both_colours"] or r["relation"] for _, r in results)


def test_swapped_colours_fail_the_relation(pairs):
    """Each object painted in the other's colour: both colours are in the picture, each at the other
    object's place — attribute binding fails, so the relative position of the named objects does."""
    results = []
    for it in pairs:
        a, b = it.scene.objects
        image = _pair_image(it.scene, dataclasses.replace(a, colour=b.colour, rgb=b.rgb),
                            dataclasses.replace(b, colour=a.colour, rgb=a.rgb))
        if it.relation and it.truth_checks["relation"]:
            results.append(et.check_pair(it.scene, image, shapes=False)["checks"])
    assert len(results) >= N_PAIRS * 0.7
    assert np.mean([r["both_colours"] for r in results]) >= 0.9
    assert np.mean([r["relation"] for r in results]) <= 0.05


def test_mirrored_pair_fails_a_left_right_relation(pairs):
    horizontal = [it for it in pairs if "horizontal" in it.relation and it.truth_checks["relation"]]
    assert len(horizontal) >= N_PAIRS // 3
    results = [et.check_pair(it.scene, it.image.flip(-1), shapes=False)["checks"] for it in horizontal]
    assert np.mean([r["relation"] for r in results]) <= 0.05
    assert np.mean([r["both_colours"] for r in results]) >= 0.9


def test_wrong_shape_fails_the_pair_shape_check(pairs):
    failed = []
    for it in pairs:
        a, b = it.scene.objects
        if not it.shape_checkable[0] or a.size == "small":
            continue
        other = "cross" if a.shape != "cross" else "circle"
        image = _pair_image(it.scene, dataclasses.replace(a, shape=other), b)
        failed.append(not et.check_pair(it.scene, image)["checks"]["shape_first"])
    assert len(failed) >= N_PAIRS // 4 and np.mean(failed) >= 0.95


def test_pair_checks_validate_and_summarize(pairs):
    with pytest.raises(ValueError, match="exactly two objects"):
        et.check_pair(dataclasses.replace(pairs[0].scene, objects=pairs[0].scene.objects[:1]), pairs[0].image)
    blank = _rendered(dataclasses.replace(pairs[0].scene, objects=()))
    checks = et.check_pair(pairs[0].scene, blank)["checks"]
    assert not any(checks[k] for k in ("colour_first", "colour_second", "both_colours", "shape_first", "shape_second"))
    records = [{"labels": {"relation": rel}, "shape_checkable": [True, sc],
                "checks": {"background": True, "colour_first": c1, "colour_second": True, "both_colours": c1,
                           "shape_first": False, "shape_second": sc, "relation": r}}
               for rel, sc, c1, r in [({"horizontal": "left of"}, True, True, True),
                                      ({"vertical": "above"}, False, True, False),
                                      ({}, True, False, None), ({"vertical": "below"}, False, False, False)]]
    s = et.summarize_pairs(records)
    assert s["n"] == 4 and s["both_colours"] == 0.5 and s["shape_second"] == 1.0 and s["n_scored"]["shape_second"] == 2
    assert s["relation"] == pytest.approx(1 / 3) and s["n_scored"]["relation"] == 3
    assert s["relation_given_colours"] == 0.5 and s["n_scored"]["relation_given_colours"] == 2
    assert s["ci95"]["relation"] == iv.wilson_interval(1, 3)


def test_pairs_leave_the_single_object_results_unchanged(bundle_dir):  # noqa: F811
    bundle = Bundle(bundle_dir)
    alone = et.run_t2i(bundle, items=2, pairs=0, steps=1, progress=False)
    both = et.run_t2i(bundle, items=2, pairs=2, steps=1, progress=False)
    assert "two_object" not in alone and both["config"]["pairs"] == 2
    assert alone["records"] == both["records"] and torch.equal(alone["images"], both["images"])
    assert alone["summary"] == both["summary"]
    assert len(both["two_object"]["records"]) == 2 and both["pair_images"].shape == (2, 3, 32, 32)
    assert not torch.equal(both["pair_images"], both["images"])  # their own noise
    with pytest.raises(ValueError, match="pairs must be an int >= 0"):
        et.run_t2i(bundle, items=1, pairs=-1)


def test_t2i_cli_writes_the_two_object_report(tmp_path, bundle_dir, capsys):  # noqa: F811
    out = tmp_path / "report"
    assert main(["eval", "t2i", "--model", str(bundle_dir), "--items", "2", "--pairs", "3", "--steps", "1",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "t2i.json").read_text())
    assert report["config"]["pairs"] == 3 and len(report["two_object"]["records"]) == 3
    for key in ("summary", "ground_truth"):
        cell = report["two_object"][key]
        assert set(et.PAIR_CHECKS) <= set(cell) and cell["n"] == 3
        for check in et.PAIR_CHECKS:
            if cell[check] is not None:
                assert cell["ci95"][check][0] <= cell[check] <= cell["ci95"][check][1]
    assert "medium+large" in report["summary"]["by_size_group"] or \
        not any(r["labels"]["size"] != "small" for r in report["records"])
    md = (out / "t2i.md").read_text()
    assert "## Two objects" in md and "## Shape by size class" in md and "| Relative position |" in md
    assert "| medium+large |" in md or "medium+large" not in json.dumps(report["summary"])
    assert {"t2i_two_object_samples.png", "t2i_accuracy.png"} <= {p.name for p in out.glob("*.png")}
    assert main(["eval", "t2i", "--model", str(bundle_dir), "--pairs", "-1", "--out", str(out)]) == 2
    assert "--pairs must be >= 0" in capsys.readouterr().err
