"""`diffrt eval unclip`: its items (the t2i benchmark's scenes and a recoloured target), the checks on
oracle and wrong outputs (the input keeps everything, the re-rendered target moves and keeps the
rest, a moved object or repainted background does not), and one CLI run on a tiny CLIP + decoder."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffrt.cli import main
from diffrt.data.world import COLOUR_RGB, SceneSpec, render, spatial_phrase
from diffrt.eval import t2i as et
from diffrt.eval import unclip as eu
from diffrt.models.bundle import Bundle

from .test_cli_train import write_config
from .test_eval_cli import PLOTS

N_ITEMS = 16


@pytest.fixture(scope="module")
def items():
    return eu.unclip_items(N_ITEMS, resolution=32)


@pytest.fixture(scope="module")
def unclip_bundle(tmp_path_factory):
    """clip/ and decoder/ trained for two steps: every code path, no good images."""
    tmp = tmp_path_factory.mktemp("unclip")
    assert main(["train", "clip", "--config", str(write_config(tmp, "clip")), "--run-dir", str(tmp / "clip"),
                 "--steps", "2"]) == 0
    assert main(["train", "decoder", "--config", str(write_config(tmp, "decoder", tmp / "clip" / "final")),
                 "--run-dir", str(tmp / "decoder"), "--steps", "2"]) == 0
    bundle = tmp / "models"
    bundle.mkdir()
    for part in ("clip", "decoder"):
        (bundle / part).symlink_to(tmp / part / "final")
    return bundle


def test_items_are_the_t2i_scenes_with_the_object_recoloured(items):
    again = eu.unclip_items(N_ITEMS // 2, resolution=32)
    assert [it.target_prompt for it in again] == [it.target_prompt for it in items[:N_ITEMS // 2]]
    for it in items:
        t2i = et.t2i_item(et.DEFAULT_BENCH_SEED, it.index, 32)
        assert it.source.prompt == t2i.prompt and torch.equal(it.source.image, t2i.image)
        obj, target = it.source.object, it.target_scene.objects[0]
        assert it.target_scene.background == it.source.scene.background
        assert dataclasses.replace(target, colour=obj.colour, rgb=obj.rgb) == obj  # only the colour changed
        assert target.colour != obj.colour and target.colour not in it.source.scene.background.colours
        assert it.target_prompt == it.source.prompt.replace(f" {obj.colour} ", f" {target.colour} ", 1)
    assert len({it.target_colour for it in items}) > 3


def test_the_input_keeps_everything_and_the_target_moves(items):
    for it in items:
        own = eu.kept(it.source, it.source.image)
        truth = it.source.truth_checks
        assert own["background"] == truth["background"] and own["colour"] == truth["colour"]
        assert own["position"] == truth["position"]
        assert own["shape"] == (True if it.source.shape_checkable else None)
        assert eu.text_diff_record(it, it.source.image)["moved"] is False
    moved = [eu.text_diff_record(it, it.target_image) for it in items]
    assert np.mean([m["moved_kept"] for m in moved]) >= 0.9  # the ceiling: the checks read the target right


def test_a_moved_object_or_a_repainted_background_is_not_kept():
    moved = repainted = 0
    for it in eu.unclip_items(40, resolution=32):
        truth = it.source.truth_checks
        obj = it.source.object
        (x, y), = obj.positions
        shifted = SceneSpec(it.source.scene.background, (dataclasses.replace(obj, positions=((1 - x, 1 - y),)),))
        if truth["position"] and spatial_phrase(shifted.objects[0].positions) != spatial_phrase(obj.positions):
            assert eu.kept(it.source, torch.from_numpy(render(shifted, 32).image))["position"] is False
            moved += 1
        if truth["background"] and it.source.scene.background.kind == "plain":
            image = it.source.image.clone()
            other = next(c for c in COLOUR_RGB if c not in it.source.scene.background.colours and c != obj.colour)
            ring = torch.from_numpy(et.border_ring(32))
            image[:, ring] = (torch.tensor(COLOUR_RGB[other], dtype=torch.float32) / 255 * 2 - 1)[:, None]
            assert eu.kept(it.source, image)["background"] is False
            repainted += 1
    assert moved >= 10 and repainted >= 2


def test_summaries_hold_their_intervals():
    rows = {"variations": [{"method": "variation", "kept": {k: k != "shape" for k in eu.KEPT},
                            "distance_to_input": 0.5, "diversity": 0.25},
                           {"method": "variation", "kept": {"background": True, "colour": False, "position": True,
                                                            "shape": None, "all": False},
                            "distance_to_input": 0.7, "diversity": None}],
            "interpolation": [], "text_diff": [{"amount": 0.5, "moved": True, "background_kept": True,
                                                "position_kept": False, "moved_kept": False}]}
    s = eu.summarize(rows)["variations"]["variation"]
    assert s["colour"]["value"] == 0.5 and s["colour"]["n"] == 2 and s["shape"]["n"] == 1  # None: not checkable
    assert s["diversity"]["value"] == 0.25 and s["distance_to_input"]["value"] == pytest.approx(0.6)
    assert eu.rms(torch.zeros(3, 2, 2), torch.ones(3, 2, 2)) == 1.0
    for bad in ([], [0.5, 0.5], [1.5], [float("nan")]):
        with pytest.raises(ValueError, match="amounts must be distinct numbers in"):
            eu.check_amounts(bad)


def test_unclip_cli_writes_the_report(tmp_path, unclip_bundle, capsys):
    out = tmp_path / "report"
    args = ["eval", "unclip", "--model", str(unclip_bundle), "--items", "3", "--steps", "2", "--amounts", "0,0.5",
            "--out", str(out), "--quiet"] + ([] if PLOTS else ["--no-plots"])
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "unclip.json").read_text())
    c, records, s = report["config"], report["records"], report["summary"]
    assert c["items"] == 3 and c["steps"] == 2 and c["amounts"] == [0.0, 0.5] and c["variations"] == 2
    assert (c["guidance"], c["inversion_guidance"], c["eta"]) == (3.0, 1.0, 0.1)  # the variations keep the input
    assert len(records["variations"]) == 3 * (2 * 2 + 1)  # two methods × two outputs, and the input itself
    assert len(records["interpolation"]) == 1 and len(records["text_diff"]) == 3 * 2
    assert s["variations"]["input"]["distance_to_input"]["value"] == 0.0
    assert set(s["text_diff"]) == {"0.0", "0.5", "target"}
    for method in ("variation", "embedding_only"):
        assert s["variations"][method]["diversity"]["n"] == 3 and s["variations"][method]["diversity"]["value"] > 0
    md = (out / "unclip.md").read_text()
    assert "## Variations" in md and "## Interpolation" in md and "## Text diffs" in md and "θ = 0.5" in md
    expected = {"unclip.json", "unclip.md", "unclip_examples.png"} | ({"unclip.png"} if PLOTS else set())
    assert {p.name for p in out.iterdir()} == expected
    assert str(out / "unclip.json") in printed
    again = eu.run_unclip(Bundle(unclip_bundle), items=3, steps=2, amounts=(0.0, 0.5), examples=0, progress=False)
    assert again["records"] == report["records"]  # seeded: the same run gives the same outputs


def test_unclip_cli_fails_clearly(tmp_path, unclip_bundle, capsys):
    args = ["eval", "unclip", "--out", str(tmp_path / "x"), "--quiet", "--model", str(unclip_bundle)]
    for flag, value, expected in (("--items", "0", "an integer >= 1"), ("--eta", "-1", "a finite number >= 0"),
                                  ("--inversion-guidance", "nan", "a finite number >= 0"),
                                  ("--amounts", "0,2", "comma-separated numbers in [0, 1]"),
                                  ("--batch-size", "1", "an integer >= 2")):
        with pytest.raises(SystemExit):
            main(args + [flag, value])
        assert f"{flag}: " in (err := capsys.readouterr().err) and expected in err, err
    only_clip = tmp_path / "only_clip"
    only_clip.mkdir()
    (only_clip / "clip").symlink_to(unclip_bundle / "clip")
    assert main(args[:-1] + [str(only_clip)]) == 2
    assert "has no 'decoder' model, which the unCLIP evaluation needs" in capsys.readouterr().err
