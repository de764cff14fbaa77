"""`diffrt eval diffedit`: its items and ground truth from the world, the measures on oracle edits (the
re-rendered target with the true mask scores 1; the input, wrong edits and a repainted background
score as they must), the SDEdit baseline's noising, and one CLI run on a tiny bundle trained here."""

import collections
import dataclasses
import json
import tomllib

import numpy as np
import pytest
import torch

from diffrt import eval as ev
from diffrt.cli import main
from diffrt.cli.options import DIFFEDIT_MASK
from diffrt.data.world import COLOUR_RGB, COLOURS, DIGITS, GLYPHS, LETTERS, SHAPES, render
from diffrt.eval import diffedit as de
from diffrt.eval import intervals as iv
from diffrt.eval import t2i as et
from diffrt.models.bundle import Bundle
from diffrt.schedules import NoiseSchedule, SamplingSchedule

from ._helpers import SHIPPED_CONFIGS
from .test_eval_cli import bundle_dir  # noqa: F401 — the tiny CLIP + base bundle fixture

N_ITEMS = 24


@pytest.fixture(scope="module")
def items():
    return de.diffedit_items(N_ITEMS, resolution=32)


def test_items_are_deterministic_and_independent_of_count(items):
    assert [it.index for it in items] == list(range(N_ITEMS))
    for i in (0, 7, N_ITEMS - 1):
        again = de.diffedit_item(de.DEFAULT_BENCH_SEED, i, 32)
        assert again.source_scene == items[i].source_scene and again.target_scene == items[i].target_scene
        assert torch.equal(again.image, items[i].image) and torch.equal(again.mask, items[i].mask)
    few = de.diffedit_items(3, resolution=32)
    assert all(a.target_scene == b.target_scene for a, b in zip(few, items))
    other = de.diffedit_items(3, resolution=32, seed=de.DEFAULT_BENCH_SEED + 1)
    assert all(a.source_scene != b.source_scene for a, b in zip(other, items))
    assert collections.Counter(it.attribute for it in items) == {"colour": N_ITEMS // 2, "shape": N_ITEMS // 2}
    assert [it.attribute for it in items[:4]] == ["colour", "shape", "colour", "shape"]
    with pytest.raises(ValueError, match="resolution must be in"):
        de.diffedit_item(0, 0, 16)


def test_items_change_one_attribute_of_one_object(items):
    for it in items:
        (src, *others), (tgt, *others_after) = it.source_scene.objects, it.target_scene.objects
        assert others == others_after and it.source_scene.background == it.target_scene.background
        changed = {f.name for f in dataclasses.fields(src) if getattr(src, f.name) != getattr(tgt, f.name)}
        assert changed == ({"colour", "rgb"} if it.attribute == "colour" else {"shape"}), (it.index, changed)
        if it.attribute == "colour":
            assert tgt.colour not in it.source_scene.background.colours
            assert tgt.colour not in {o.colour for o in it.source_scene.objects}
        else:
            assert tgt.shape in (SHAPES if not src.is_glyph else DIGITS if src.shape in DIGITS else LETTERS)
            assert tgt.shape not in {o.shape for o in it.source_scene.objects}
        # the captions are the scenes' Full captions and differ in the one word
        source, target = it.source_prompts["full"].split(), it.prompts["full"].split()
        assert len(source) == len(target) and sum(a != b for a, b in zip(source, target)) == 1


def test_ground_truth_region_and_changed_pixels(items):
    for it in items:
        src, tgt = render(it.source_scene, 32), render(it.target_scene, 32)
        region = torch.from_numpy(src.objects[0].mask | tgt.objects[0].mask)
        assert torch.equal(it.edit_region[0], region)
        assert torch.equal(it.image, torch.from_numpy(src.image))
        assert torch.equal(it.target_image, torch.from_numpy(tgt.image))
        mask = it.mask[0] > 0.5
        assert bool((mask | ~region).all())  # the changed pixels hold the true region
        outside = (~mask).expand_as(it.image)
        assert torch.equal(it.image[outside], it.target_image[outside])  # a perfect edit changes nothing else
        differs = (it.image != it.target_image).any(dim=0)
        assert torch.equal(mask, differs | region)


def test_oracle_edit_scores_one_and_no_edit_zero(items):
    """The re-rendered target with the true mask: success 1, IoU 1, the background untouched; the
    input: success 0; and the summary of such records says so, with intervals around it."""
    records = []
    for it in items:
        perfect = de.score_edit(it, it.target_image, it.edit_region)
        assert perfect["edit_success"] and perfect["mask_iou"] == 1.0 and perfect["success_psnr"]
        assert perfect["background_psnr"] == de.PSNR_CAP and perfect["predicted"] == it.labels[it.attribute]
        unedited = de.score_edit(it, it.image, it.object_mask)
        assert not unedited["edit_success"] and unedited["background_psnr"] == de.PSNR_CAP
        assert 0 < unedited["mask_iou"] <= 1
        base = {"index": it.index, "attribute": it.attribute, "size": it.labels["size"]}
        records += [{**base, "method": "diffedit", **perfect, "mask_area": 0.1, "true_area": 0.1},
                    {**base, "method": "sdedit", **de.score_edit(it, it.image)}]
    s = de.summarize(records)
    assert s["diffedit"]["overall"]["edit_success"]["value"] == 1.0
    assert s["diffedit"]["overall"]["mask_iou"]["value"] == 1.0
    assert s["sdedit"]["overall"]["edit_success"]["value"] == 0.0 and s["sdedit"]["overall"]["mask_iou"] is None
    assert s["diffedit_vs_sdedit"]["all"]["edit_success"]["value"] == 1.0
    assert s["diffedit"]["overall"]["edit_success"]["ci95"] == iv.wilson_interval(N_ITEMS, N_ITEMS)
    assert set(s["diffedit"]["by_attribute"]) == set(de.ATTRIBUTES)


def test_wrong_edits_fail(items):
    """The edit to another value of the attribute fails; so does erasing the object; a repainted
    background costs PSNR but not success."""
    tested_shapes = 0
    for k, it in enumerate(items):
        src, tgt = it.source_scene.objects[0], it.target_scene.objects[0]
        if it.attribute == "colour":
            free = [c for c in COLOURS if c not in it.source_scene.background.colours and c not in (src.colour, tgt.colour)]
            wrong = dataclasses.replace(tgt, colour=free[k % len(free)], rgb=COLOUR_RGB[free[k % len(free)]])
        else:
            pool = [s for s in (GLYPHS if src.is_glyph else SHAPES) if s not in (src.shape, tgt.shape)]
            wrong = dataclasses.replace(tgt, shape="cross" if "cross" in pool else pool[0])
        image = torch.from_numpy(render(dataclasses.replace(it.target_scene, objects=(wrong, *it.target_scene.objects[1:])),
                                        32).image)
        # two glyphs can paint the same pixels inside the changed region at 32 px: nothing to tell apart
        if it.attribute == "colour" or not np.array_equal(ev.silhouette(it, image), ev.silhouette(it, it.target_image)):
            tested_shapes += it.attribute == "shape"
            assert not de.score_edit(it, image)["edit_success"], (it.index, it.attribute)
        assert not de.score_edit(it, it.clean_image)["edit_success"]
        repainted = it.target_image.clone()
        repainted[:, ~(it.mask[0] > 0.5)] *= 0.5
        score = de.score_edit(it, repainted)
        assert score["edit_success"] and score["background_psnr"] < de.PSNR_BAR and not score["success_psnr"]
    assert tested_shapes >= N_ITEMS // 2 - 2
    with pytest.raises(ValueError, match="item's shape"):
        de.score_edit(items[0], torch.zeros(3, 16, 16))


def test_region_fill_gets_colours_and_few_shapes(items):
    """The true region painted in the target colour: colour edits succeed (all but a few, whose
    texture's accent the flat fill lacks) with the background untouched; as a shape it reads as the
    larger of the two shapes, right for a minority of edits."""
    colours, shapes = [], []
    for it in items:
        filled = de.region_fill(it)
        outside = ~it.edit_region[0]
        assert torch.equal(filled[:, outside], it.image[:, outside])
        score = de.score_edit(it, filled)
        assert score["background_psnr"] == de.PSNR_CAP
        (colours if it.attribute == "colour" else shapes).append(score["edit_success"])
    assert len(shapes) == len(colours) == N_ITEMS // 2
    assert np.mean(colours) >= 0.9 and np.mean(shapes) < 0.5


class _Oracle:
    """An ε-prediction denoiser whose x̂0 is always ``target``: DDIM from any x_t ends on it exactly."""

    prediction_type, in_channels, out_channels = "epsilon", 3, 3

    def __init__(self, schedule: NoiseSchedule, target: torch.Tensor):
        self.abar, self.target, self.calls = schedule.alphas_cumprod, target, []

    def __call__(self, x, t, cond):
        self.calls.append((x.clone(), t.clone()))
        a = self.abar[t].float().view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target.repeat(x.shape[0] // self.target.shape[0], 1, 1, 1)) / (1 - a).sqrt()


def test_sdedit_noises_to_the_strength_and_denoises(items):
    noise_schedule = NoiseSchedule.make("linear", 1000, beta_start=1e-4, beta_end=0.02)
    tail = SamplingSchedule.ddim(noise_schedule, 10, spacing="trailing").tail(0.5)
    images = torch.stack([it.image for it in items[:2]])
    targets = torch.stack([it.target_image for it in items[:2]])
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    oracle = _Oracle(noise_schedule, targets)
    out = de.sdedit(oracle, noise_schedule, images, tail, cond={"c": torch.zeros(2, 1)},
                    uncond={"c": torch.ones(2, 1)}, guidance=3.0, noise=noise)
    assert len(tail) == 5 and len(oracle.calls) == 5
    x_first, t_first = oracle.calls[0]
    t0 = int(tail.timesteps[0])
    assert (t_first == t0).all()
    expected = noise_schedule.add_noise(images, noise, torch.full((2,), t0))
    assert torch.allclose(x_first[:2], expected, atol=1e-6)
    assert torch.allclose(out, targets, atol=1e-4)


def test_benchmark_seeds_are_no_training_seeds():
    """Every shipped model trained on scenes from generators [t, i, 0] (t its config's [data] seed;
    CLIP's tokenizer on t + 10,000,000); the benchmarks draw from [s, i, attempt, …] with their
    default seed s, which must be none of those t."""
    training = set()
    for path in SHIPPED_CONFIGS:
        seed = tomllib.loads(path.read_text())["data"]["seed"]
        training |= {seed, seed + 10_000_000}
    assert len(SHIPPED_CONFIGS) >= 10 and training
    assert not {de.DEFAULT_BENCH_SEED, et.DEFAULT_BENCH_SEED, ev.DEFAULT_SEED} & training, training
    assert de.DIFFEDIT_STREAM != 0 and et.TWO_OBJECT_STREAM != 0 and de.DIFFEDIT_STREAM != et.TWO_OBJECT_STREAM


def _cells(summary):
    for method, scopes in summary.items():
        if method == "diffedit_vs_sdedit":
            for measures in scopes.values():
                yield from measures.values()
            continue
        for key, value in scopes.items():
            if key in ("mask_area", "true_area"):
                yield value
            elif key == "overall":
                yield from (v for v in value.values() if isinstance(v, dict))
            else:
                for cell in value.values():
                    yield from (v for v in cell.values() if isinstance(v, dict))


def test_diffedit_cli_writes_the_report(tmp_path, bundle_dir, capsys):  # noqa: F811
    out = tmp_path / "report"
    assert main(["eval", "diffedit", "--model", str(bundle_dir), "--items", "3", "--steps", "2", "--mask-n", "2",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "diffedit.json").read_text())
    c = report["config"]
    assert c["items"] == 3 and c["steps"] == 2 and c["decode_steps"] == 1 and c["mask_n"] == 2 and c["strength"] == 0.5
    assert {k: c[k] for k in ("mask_strength", "mask_normalise", "mask_smooth")} == {
        k: DIFFEDIT_MASK[k] for k in ("mask_strength", "mask_normalise", "mask_smooth")}  # the CLI's own mask
    assert c["mask_threshold"] == DIFFEDIT_MASK["threshold"]
    methods = (*de.METHODS, *de.REFERENCES)
    assert collections.Counter(r["method"] for r in report["records"]) == {m: 3 for m in methods}
    s = report["summary"]
    assert s["target"]["overall"]["edit_success"]["value"] == 1.0  # the ceiling, scored in the run
    assert s["unedited"]["overall"]["edit_success"]["value"] == 0.0
    assert s["diffedit_true_mask"]["overall"]["background_psnr"]["value"] == de.PSNR_CAP  # outside the mask: kept
    for record in report["records"]:
        assert (record["mask_iou"] is not None) == (record["method"] == "diffedit")
    cells = list(_cells(s))
    assert len(cells) > 40
    for cell in cells:
        assert cell["value"] is None or cell["ci95"][0] <= cell["value"] <= cell["ci95"][1], cell
    md = (out / "diffedit.md").read_text()
    assert "| DiffEdit |" in md and "| SDEdit |" in md and "## DiffEdit − SDEdit" in md and "Mask IoU" in md
    assert {p.name for p in out.iterdir()} == {"diffedit.json", "diffedit.md", "diffedit.png", "diffedit_examples.png"}
    assert str(out / "diffedit.json") in printed


def test_masks_do_not_depend_on_the_batch_size(bundle_dir):  # noqa: F811
    bundle = Bundle(bundle_dir)
    kwargs = dict(items=2, steps=2, mask_n=1, true_mask=False, examples=0, progress=False)
    a = de.run_diffedit(bundle, batch_size=1, **kwargs)
    b = de.run_diffedit(bundle, batch_size=2, **kwargs)
    masks = [[(r["mask_iou"], r["mask_area"]) for r in x["records"] if r["method"] == "diffedit"] for x in (a, b)]
    assert masks[0] == masks[1]
    psnr = [[r["background_psnr"] for r in x["records"] if r["method"] == "sdedit"] for x in (a, b)]
    assert np.allclose(psnr[0], psnr[1], atol=1e-3)
    with pytest.raises(ValueError, match="strength must lie in"):
        de.run_diffedit(bundle, items=1, strength=0)
    for kw, match in (({"mask_strength": 0}, "mask_strength"), ({"mask_threshold": 1.0}, "mask_threshold"),
                      ({"mask_normalise": "median"}, "normalise"), ({"mask_smooth": -1}, "smooth")):
        with pytest.raises(ValueError, match=match):
            de.run_diffedit(bundle, items=1, **kw)


def test_mask_options_reach_the_masks(bundle_dir):  # noqa: F811
    """The recorded mask areas are those of generate_mask with the options given: a larger threshold
    of the same map never grows a mask."""
    bundle = Bundle(bundle_dir)
    kwargs = dict(items=2, steps=2, mask_n=1, true_mask=False, examples=0, progress=False, mask_strength=0.2,
                  mask_normalise="max", mask_smooth=1)
    areas = [[r["mask_area"] for r in de.run_diffedit(bundle, mask_threshold=t, **kwargs)["records"]
              if r["method"] == "diffedit"] for t in (0.2, 0.9)]
    assert all(0 < big and small <= big for small, big in zip(areas[1], areas[0])), areas


def test_diffedit_cli_fails_clearly(tmp_path, bundle_dir, capsys):  # noqa: F811
    args = ["eval", "diffedit", "--out", str(tmp_path / "x"), "--quiet"]
    for flag, value, expected in (("--strength", "0", "a number in (0, 1]"), ("--items", "0", "an integer >= 1"),
                                  ("--mask-threshold", "1", "a number in [0, 1)"),
                                  ("--guidance", "nan", "a finite number >= 0"), ("--mask-n", "0", "an integer >= 1")):
        with pytest.raises(SystemExit):
            main(args + ["--model", str(bundle_dir), flag, value])
        assert f"{flag}: expected {expected}" in capsys.readouterr().err
    only_clip = tmp_path / "only_clip"
    only_clip.mkdir()
    (only_clip / "clip").symlink_to(bundle_dir / "clip")
    assert main(args + ["--model", str(only_clip)]) == 2
    assert "has no 'base' model, which the DiffEdit evaluation needs" in capsys.readouterr().err
