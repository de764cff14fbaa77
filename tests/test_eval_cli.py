"""`diffrt eval editbench` end to end on a tiny bundle trained here (CLIP + base, a few steps each):
the report files, their structure, a two-model comparison, and clear errors."""

import importlib.util
import json

import pytest
import torch

from diffrt import eval as ev
from diffrt.eval import report as eval_report
from diffrt.models.bundle import Bundle
from diffrt.cli import main
from diffrt.cli.options import DIFFEDIT_MASK

from .test_cli_train import write_config  # the tiny model configs of the CLI tests

PLOTS = importlib.util.find_spec("matplotlib") is not None
FAST = ["--items", "3", "--steps", "2", "--diffedit-n", "2", "--quiet"] + ([] if PLOTS else ["--no-plots"])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """clip/ and base/ trained for two steps: enough for every code path, not for good edits."""
    tmp = tmp_path_factory.mktemp("editbench")
    assert main(["train", "clip", "--config", str(write_config(tmp, "clip")), "--run-dir", str(tmp / "clip"),
                 "--steps", "2"]) == 0
    assert main(["train", "base", "--config", str(write_config(tmp, "base", tmp / "clip" / "final")),
                 "--run-dir", str(tmp / "base"), "--steps", "2"]) == 0
    bundle = tmp / "models"
    bundle.mkdir()
    for part in ("clip", "base"):
        (bundle / part).symlink_to(tmp / part / "final")
    return bundle


def test_editbench_cli_writes_the_report(tmp_path, bundle_dir, capsys):
    out = tmp_path / "report"
    assert main(["eval", "editbench", "--model", str(bundle_dir), "--model-name", "tiny", "--out", str(out),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "editbench.json").read_text())
    assert report["name"] == "tiny" and report["config"]["items"] == 3 and report["config"]["steps"] == 2
    c, m = report["config"], DIFFEDIT_MASK  # DiffEdit's IoU column uses the commands' mask
    assert (c["diffedit_strength"], c["diffedit_normalise"], c["diffedit_smooth"], c["diffedit_threshold"]) == (
        m["mask_strength"], m["mask_normalise"], m["mask_smooth"], m["threshold"])
    assert set(report["overall"]) == {"simple", "rich", "full", "all"}
    for key in ("by_mask_size", "by_attribute", "by_object_category", "by_scene"):
        assert set(report[key]) == {"simple", "rich", "full", "all"}
    assert set(report["by_mask_size"]["all"]) == set(ev.MASK_SIZES)  # items 0-2: one of each size
    assert len(report["items"]) == 3 * len(ev.PROMPT_TYPES)
    for record in report["items"]:
        assert set(ev.METRICS) <= set(record)
        assert 0 <= record["diffedit_iou"] <= 1 and record["clip_r_precision"] in (0.0, 1.0)
    overall = report["overall"]["all"]
    assert 0 <= overall["attribute_accuracy"] <= 1 and overall["background_psnr"] > 0
    md = (out / "editbench.md").read_text()
    assert "| Mask-Simple |" in md and "## By mask size" in md and "## By attribute" in md
    charts = {"editbench_by_attribute.png", "editbench_by_mask_size.png"} if PLOTS else set()
    pngs = {"editbench_examples.png"} | charts
    assert pngs <= {p.name for p in out.glob("*.png")}
    assert str(out / "editbench.json") in printed


def test_same_model_twice_compares_equal(tmp_path, bundle_dir):
    """--compare runs another model on the same items with the same noise: the model against its own
    base UNet folder differs by exactly nothing."""
    out = tmp_path / "compare"
    assert main(["eval", "editbench", "--model", str(bundle_dir), "--model-name", "a", "--out", str(out),
                 "--compare", f"b={bundle_dir / 'base'}", *FAST, "--no-plots"]) == 0
    table = (out / "editbench_compare.md").read_text()
    assert "Mask-Simple: a" in table and "Mask-Simple: b" in table and "Δ" in table
    deltas = [cell.strip() for line in table.splitlines() if line.startswith("| ") and "Mask size" not in line
              for cell in line.split("|")[1:-1] if cell.strip().startswith(("+", "-"))]
    zero = {f"{a} [{b}, {c}]" for a in ("+0.000", "-0.000") for b in ("+0.000", "-0.000") for c in ("+0.000", "-0.000")}
    assert deltas and set(deltas) <= zero  # the difference and its whole interval
    summary = json.loads((out / "editbench_compare.json").read_text())
    assert set(summary) == {"a", "b"} and (out / "compare" / "b" / "editbench.json").is_file()


def test_python_api_compares_models(tmp_path, bundle_dir):
    bundle = Bundle(bundle_dir)
    items = ev.editbench(2, resolution=32)
    results = ev.compare_editbench([("bundle", bundle), ("unet", bundle.unet("base"))], bundle, items=items, steps=1,
                                   diffedit_n=0, progress=False, out=tmp_path)
    a, b = results["bundle"], results["unet"]
    assert a.records == b.records  # same UNet, text encoder and noise
    assert all(r["diffedit_iou"] is None for r in a.records) and a.summary["overall"]["all"]["diffedit_iou"] is None
    assert "## CLIP-R-Precision" in (tmp_path / "editbench_compare.md").read_text()
    assert eval_report.comparison_markdown(results) == (tmp_path / "editbench_compare.md").read_text()
    with pytest.raises(ValueError, match="distinct names"):
        ev.compare_editbench([("x", bundle), ("x", bundle)], bundle)


def test_editbench_cli_fails_clearly(tmp_path, bundle_dir, capsys):
    args = ["eval", "editbench", "--out", str(tmp_path / "x"), "--quiet", "--no-plots"]
    assert main(args + ["--model", str(bundle_dir), "--items", "0"]) == 2
    assert "--items and --steps must be >= 1" in capsys.readouterr().err
    assert main(args + ["--model", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    only_clip = tmp_path / "only_clip"
    only_clip.mkdir()
    (only_clip / "clip").symlink_to(bundle_dir / "clip")
    assert main(args + ["--model", str(only_clip), "--items", "1"]) == 2
    assert "has no 'base' model" in capsys.readouterr().err
    assert main(args + ["--model", str(bundle_dir), "--compare", "nameless"]) == 2
    assert "--compare takes NAME=DIR" in capsys.readouterr().err
    assert main(args + ["--model", str(bundle_dir), "--items", "1", "--resolution", "8"]) == 2
    assert "resolution must be in [32, 256]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cond_image"):
        ev.run_editbench(Bundle(bundle_dir), unet=torch.nn.Module(), noise_schedule=object(), n_items=1)
