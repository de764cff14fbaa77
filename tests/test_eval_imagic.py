"""`diffrt eval imagic`: its items and ground truth from the world, the measures on oracle outputs
(the re-rendered target scores an edit and keeps everything; the input scores no edit; wrong edits,
moved objects and repainted backgrounds score as they must), the per-η summary and its best η, and
CLI runs on a tiny bundle trained here."""

import collections
import dataclasses
import json
import tomllib

import numpy as np
import pytest
import torch

from diffrt.cli import main
from diffrt.data.world import COLOUR_RGB, COLOURS, DIGITS, LETTERS, SHAPES, SceneSpec, render, spatial_phrase
from diffrt.eval import diffedit as de
from diffrt.eval import imagic as im
from diffrt.eval import intervals as iv
from diffrt.eval import t2i as et
from diffrt.eval import unclip as eu
from diffrt.models.bundle import Bundle

from ._helpers import SHIPPED_CONFIGS
from .test_eval_cli import bundle_dir  # noqa: F401 — the tiny CLIP + base bundle fixture

N_ITEMS = 24
FAST = ["--items", "2", "--steps", "2", "--embedding-steps", "2", "--finetune-steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def items():
    return im.imagic_items(N_ITEMS, resolution=32)


def test_items_are_deterministic_and_independent_of_count(items):
    assert [it.index for it in items] == list(range(N_ITEMS))
    for i in (0, 7, N_ITEMS - 1):
        again = im.imagic_item(im.DEFAULT_BENCH_SEED, i, 32)
        assert again.source_scene == items[i].source_scene and again.target_scene == items[i].target_scene
        assert torch.equal(again.image, items[i].image) and torch.equal(again.edit_region, items[i].edit_region)
    few = im.imagic_items(3, resolution=32)
    assert all(a.target_scene == b.target_scene for a, b in zip(few, items))
    other = im.imagic_items(3, resolution=32, seed=im.DEFAULT_BENCH_SEED + 1)
    assert all(a.source_scene != b.source_scene for a, b in zip(other, items))
    assert [it.attribute for it in items[:4]] == ["colour", "shape", "colour", "shape"]
    assert collections.Counter(it.attribute for it in items) == {"colour": N_ITEMS // 2, "shape": N_ITEMS // 2}
    # another stream than the t2i items of the same seed and index
    assert all(it.source_scene != et.t2i_item(im.DEFAULT_BENCH_SEED, it.index, 32).scene for it in items[:4])
    with pytest.raises(ValueError, match="resolution must be in"):
        im.imagic_item(0, 0, 16)
    with pytest.raises(ValueError, match="index must be an int"):
        im.imagic_item(0, -1, 32)


def test_items_change_exactly_one_attribute(items):
    for it in items:
        (src,), (tgt,) = it.source_scene.objects, it.target_scene.objects
        assert src.count == 1 and it.source_scene.background == it.target_scene.background
        changed = {f.name for f in dataclasses.fields(src) if getattr(src, f.name) != getattr(tgt, f.name)}
        assert changed == ({"colour", "rgb"} if it.attribute == "colour" else {"shape"}), (it.index, changed)
        if it.attribute == "colour":
            assert tgt.colour not in it.source_scene.background.colours and tgt.rgb == COLOUR_RGB[tgt.colour]
        else:
            assert tgt.shape in (SHAPES if not src.is_glyph else DIGITS if src.shape in DIGITS else LETTERS)
        assert (it.source_value, it.target_value) == (getattr(src, it.attribute), getattr(tgt, it.attribute))
        # the prompt is the target scene's Full caption, one word away from the input's
        assert it.target_prompt == render(it.target_scene, 32).caption_full
        assert it.source_prompt == render(it.source_scene, 32).caption_full
        source, target = it.source_prompt.split(), it.target_prompt.split()
        assert len(source) == len(target) and sum(a != b for a, b in zip(source, target)) == 1


def test_ground_truth_changed_pixels(items):
    for it in items:
        src, tgt = render(it.source_scene, 32), render(it.target_scene, 32)
        assert torch.equal(it.image, torch.from_numpy(src.image))
        assert torch.equal(it.target_image, torch.from_numpy(tgt.image))
        region = torch.from_numpy(src.objects[0].mask | tgt.objects[0].mask)
        assert bool((it.edit_region | ~region).all())  # the changed pixels hold both objects
        outside = (~it.edit_region).expand_as(it.image)
        assert torch.equal(it.image[outside], it.target_image[outside])  # a perfect edit changes nothing else
        assert torch.equal(it.edit_region, region | (it.image != it.target_image).any(dim=0))


def test_oracle_outputs_score_one_and_zero(items):
    """The re-rendered target: an edit that keeps everything, the background PSNR at its cap; the
    input: no edit, everything kept. A summary of such records, the input as η = 0 and the target
    as η = 1, says so with intervals around it, and picks η = 1."""
    records = []
    for it in items:
        perfect = im.score_output(it, it.target_image)
        assert perfect["edit_success"] and perfect["success_background_kept"], it.index
        assert perfect["background_kept"] and perfect["position_kept"]
        assert perfect["other_kept"] is (True if it.other_checkable else None)
        assert perfect["background_psnr"] == im.PSNR_CAP and perfect["predicted"] == it.target_value
        assert perfect["image_psnr"] < im.PSNR_CAP  # the object did change
        unedited = im.score_output(it, it.image)
        assert not unedited["edit_success"] and not unedited["success_background_kept"]
        assert unedited["background_kept"] and unedited["position_kept"]
        assert unedited["other_kept"] is (True if it.other_checkable else None)
        assert unedited["background_psnr"] == unedited["image_psnr"] == im.PSNR_CAP
        base = {"index": it.index, "attribute": it.attribute}
        records += [{**base, "output": "imagic", "eta": 0.0, **unedited},
                    {**base, "output": "imagic", "eta": 1.0, **perfect}]
    # every shape edit's colour is checkable; some colour edits' shapes are
    assert all(it.other_checkable for it in items if it.attribute == "shape")
    assert any(it.other_checkable for it in items if it.attribute == "colour")
    s = im.summarize(records)
    assert [entry["eta"] for entry in s["by_eta"]] == [0.0, 1.0] and s["references"] == {}
    zero, one = (entry["overall"] for entry in s["by_eta"])
    assert zero["edit_success"]["value"] == 0.0 and one["edit_success"]["value"] == 1.0
    assert one["success_background_kept"]["ci95"] == iv.wilson_interval(N_ITEMS, N_ITEMS)
    assert zero["background_kept"]["value"] == one["position_kept"]["value"] == 1.0
    assert one["other_kept"]["n"] == sum(it.other_checkable for it in items)
    assert s["best_eta"]["eta"] == 1.0 and s["best_eta"]["measure"] == im.BEST_BY
    assert s["best_eta"]["edit_success"] == one["edit_success"]
    assert s["reconstruction_psnr"]["value"] == im.PSNR_CAP
    assert set(s["by_eta"][1]["by_attribute"]) == set(im.ATTRIBUTES)


def _with_object(scene: SceneSpec, **changes) -> torch.Tensor:
    obj = dataclasses.replace(scene.objects[0], **changes)
    return torch.from_numpy(render(dataclasses.replace(scene, objects=(obj,)), 32).image)


def _moved(scene: SceneSpec):
    """``scene`` with its object moved to another 3×3 cell (the farthest), at least two pixels inside
    it and whole on the image (1.25 radii off the border, as the world places objects); None when
    the object is too large for that."""
    obj = scene.objects[0]
    low = max(1 / 6, 1.25 * obj.radius)
    if low > 1 / 3 - 2 / 32:
        return None
    here = obj.positions[0]
    cells = [(x, y) for x in (low, 0.5, 1 - low) for y in (low, 0.5, 1 - low)
             if spatial_phrase([(x, y)]) != spatial_phrase(obj.positions)]
    far = max(cells, key=lambda c: (c[0] - here[0]) ** 2 + (c[1] - here[1]) ** 2)
    return dataclasses.replace(scene, objects=(dataclasses.replace(obj, positions=(far,)),))


def test_wrong_edits_fail(items):
    """Another value of the edited attribute is no edit; neither is erasing the object; a moved
    object loses its position, a repainted background its background, a recoloured shape edit its
    other attribute — each without touching the other measures' verdicts it must not touch."""
    tested = collections.Counter()
    for k, it in enumerate(items):
        target, bg = it.target_scene, it.target_scene.background
        obj = target.objects[0]
        if it.attribute == "colour":
            free = [c for c in COLOURS if c not in bg.colours and c not in (it.source_value, it.target_value)]
            colour = free[k % len(free)]
            wrong = _with_object(target, colour=colour, rgb=COLOUR_RGB[colour])
        else:
            kind = SHAPES if not obj.is_glyph else DIGITS if obj.shape in DIGITS else LETTERS
            shape = [s for s in kind if s not in (it.source_value, it.target_value)][k % (len(kind) - 2)]
            wrong = _with_object(target, shape=shape)
            wrong_scene = dataclasses.replace(target, objects=(dataclasses.replace(obj, shape=shape),))
            if not et.check(wrong_scene, wrong)["checks"]["shape"]:
                wrong = None  # the wrong shape does not read as itself at 32 px: nothing to tell apart
        if wrong is not None:
            tested[it.attribute] += 1
            assert not im.score_output(it, wrong)["edit_success"], (it.index, it.attribute)
        erased = torch.from_numpy(render(SceneSpec(bg, ()), 32).image)
        assert not im.score_output(it, erased)["edit_success"]
        moved = _moved(target)
        if moved is not None:
            tested["position"] += 1
            assert not im.score_output(it, torch.from_numpy(render(moved, 32).image))["position_kept"], it.index
        repainted = im.score_output(it, torch.from_numpy(render(et.changed_scene(target, "background"), 32).image))
        assert not repainted["background_kept"] and not repainted["success_background_kept"]
        assert repainted["background_psnr"] < 20
        if it.attribute == "shape":
            colour = next(c for c in COLOURS if c not in bg.colours and c != obj.colour)
            assert im.score_output(it, _with_object(target, colour=colour, rgb=COLOUR_RGB[colour]))["other_kept"] \
                is False
    assert tested["colour"] == N_ITEMS // 2 and tested["shape"] >= N_ITEMS // 4, tested
    assert tested["position"] >= N_ITEMS // 2, tested
    with pytest.raises(ValueError, match="item's shape"):
        im.score_output(items[0], torch.zeros(3, 16, 16))


def test_best_eta_is_the_highest_success_and_ties_go_to_the_smaller():
    def record(eta, success, index=0):
        return {"index": index, "attribute": "colour", "output": "imagic", "eta": eta, "edit_success": success,
                "background_kept": True, "position_kept": True, "other_kept": None,
                "success_background_kept": success, "background_psnr": 20.0, "image_psnr": 20.0}

    tie = im.summarize([record(0.8, True), record(0.2, False), record(0.5, True)])
    assert [e["eta"] for e in tie["by_eta"]] == [0.2, 0.5, 0.8] and tie["best_eta"]["eta"] == 0.5
    assert tie["reconstruction_psnr"] is None  # η = 0 not swept
    assert im.summarize([record(0.0, False), record(1.0, False)])["best_eta"]["eta"] == 0.0
    references = im.summarize([{**record(None, True), "output": "target"}])
    assert references["by_eta"] == [] and references["best_eta"] is None
    assert references["references"]["target"]["overall"]["edit_success"]["value"] == 1.0


def test_benchmark_stream_is_no_training_generator():
    """Every shipped model trained on scenes from generators [t, i, 0] (t its config's [data] seed;
    CLIP's tokenizer on t + 10,000,000); the Imagic items draw from [s, i, attempt, IMAGIC_STREAM]
    with the default seed s, none of those t, and a stream no other benchmark uses."""
    training = set()
    for path in SHIPPED_CONFIGS:
        seed = tomllib.loads(path.read_text())["data"]["seed"]
        training |= {seed, seed + 10_000_000}
    assert len(SHIPPED_CONFIGS) >= 10 and im.DEFAULT_BENCH_SEED not in training
    assert im.IMAGIC_STREAM not in (0, et.TWO_OBJECT_STREAM, de.DIFFEDIT_STREAM, eu.UNCLIP_STREAM)
    item_states = {tuple(np.random.SeedSequence([im.DEFAULT_BENCH_SEED, i, a, im.IMAGIC_STREAM]).generate_state(4))
                   for i in range(50) for a in range(4)}
    training_states = {tuple(np.random.SeedSequence([t, i, 0]).generate_state(4)) for t in training for i in range(50)}
    assert len(item_states) == 200 and not item_states & training_states


def _cells(summary):
    for entry in summary["by_eta"] + list(summary["references"].values()):
        for cell in [entry["overall"], *entry["by_attribute"].values()]:
            yield from (cell[m] for m in im.MEASURES if cell[m] is not None)


def test_imagic_cli_writes_the_report(tmp_path, bundle_dir, capsys):  # noqa: F811
    out = tmp_path / "report"
    assert main(["eval", "imagic", "--model", str(bundle_dir), *FAST, "--etas", "0", "0.5", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "imagic.json").read_text())
    c = report["config"]
    assert c["items"] == 2 and c["steps"] == 2 and c["embedding_steps"] == c["finetune_steps"] == 2
    assert c["etas"] == [0.0, 0.5, 1.0] and c["guidance"] == im.DEFAULT_GUIDANCE
    assert collections.Counter((r["output"], r["eta"]) for r in report["records"]) == {
        ("imagic", 0.0): 2, ("imagic", 0.5): 2, ("imagic", 1.0): 2, ("unedited", None): 2, ("target", None): 2}
    s = report["summary"]
    assert set(s) == {"by_eta", "references", "best_eta", "reconstruction_psnr"}
    assert [e["eta"] for e in s["by_eta"]] == [0.0, 0.5, 1.0] and s["best_eta"]["eta"] in c["etas"]
    assert s["references"]["target"]["overall"]["edit_success"]["value"] == 1.0  # the ceiling, scored in the run
    assert s["references"]["unedited"]["overall"]["edit_success"]["value"] == 0.0
    assert s["reconstruction_psnr"] == s["by_eta"][0]["overall"]["image_psnr"]
    cells = list(_cells(s))
    assert len(cells) > 50
    for cell in cells:
        assert cell["ci95"][0] <= cell["value"] <= cell["ci95"][1], cell
    md = (out / "imagic.md").read_text()
    assert "## Trade-off curve: all items" in md and "## Trade-off curve: colour edits" in md
    assert "| 0.5 |" in md and "| re-rendered target |" in md and "**Best η:" in md and "Reconstruction (η = 0" in md
    assert {p.name for p in out.iterdir()} == {"imagic.json", "imagic.md", "imagic.png", "imagic_examples.png"}
    assert str(out / "imagic.json") in printed


def test_every_eta_starts_from_the_items_noise(bundle_dir):  # noqa: F811
    """η = 1 gives the same output alone as in a sweep, and a run is reproducible."""
    bundle = Bundle(bundle_dir)
    kwargs = dict(items=1, steps=2, embedding_steps=1, finetune_steps=1, examples=1, progress=False)
    sweep = im.run_imagic(bundle, etas=(1.0, 0.0), **kwargs)
    alone = im.run_imagic(bundle, etas=1, **kwargs)
    assert sweep["config"]["etas"] == [0.0, 1.0]
    assert torch.equal(sweep["examples"][0]["outputs"][1], alone["examples"][0]["outputs"][0])
    again = im.run_imagic(bundle, etas=(0.0, 1.0), **kwargs)
    assert again["records"] == sweep["records"]
    for etas, expected in (([], "etas must not be empty"), ([float("nan")], "etas must be finite"),
                           ([0.5, 0.5], "etas must be distinct"), ("x", "etas must be a number or a sequence")):
        with pytest.raises(ValueError, match=expected):
            im.run_imagic(bundle, etas=etas, **kwargs)
    for name, value in (("items", 0), ("embedding_steps", -1), ("guidance", float("inf")), ("steps", 1.5)):
        with pytest.raises(ValueError, match=name):
            im.run_imagic(bundle, **{**kwargs, name: value})


def test_imagic_cli_fails_clearly(tmp_path, bundle_dir, capsys):  # noqa: F811
    args = ["eval", "imagic", "--out", str(tmp_path / "x"), "--quiet", "--no-plots"]
    for flag, value, expected in (("--etas", "nan", "a finite number"), ("--items", "0", "an integer >= 1"),
                                  ("--embedding-steps", "-1", "an integer >= 0"),
                                  ("--finetune-steps", "x", "an integer >= 0"), ("--steps", "0", "an integer >= 1"),
                                  ("--guidance", "nan", "a finite number >= 0"),
                                  ("--embedding-lr", "0", "a finite number > 0"),
                                  ("--finetune-lr", "inf", "a finite number"),
                                  ("--seed", "-1", "an integer in [0, 2**64 - 1]")):
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["--model", str(bundle_dir), flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}: expected {expected}" in capsys.readouterr().err
    assert main(args + ["--model", str(bundle_dir), "--etas", "0.5", "1", "0.5"]) == 2
    assert "--etas must be distinct, got 0.5 1 0.5" in capsys.readouterr().err
    only_clip = tmp_path / "only_clip"
    only_clip.mkdir()
    (only_clip / "clip").symlink_to(bundle_dir / "clip")
    assert main(args + ["--model", str(only_clip)]) == 2
    assert "has no 'base' model, which the Imagic evaluation needs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
