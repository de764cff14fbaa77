"""`diffrt eval t2i`: its checks on the world's own renderings (right images pass, wrong ones fail the
right check) and one CLI run on a tiny bundle trained here."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffrt.eval import t2i as et
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
