"""Writing a text-to-image evaluation: OUT/t2i.json (everything but the images), OUT/t2i.md (the
accuracies as markdown tables) and OUT/t2i_samples.png (the first samples, framed by the verdict)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image, ImageDraw

from ..images import to_pil
from ._shared import threshold_label
from .t2i import BREAKDOWNS, CHECKS

CHECK_NAMES = {"background": "Background", "colour": "Colour", "position": "Position",
               "colour_position": "Colour+position", "shape": "Shape"}
BREAKDOWN_NAMES = {"background": "Background kind", "size": "Size", "category": "Object"}
GRID_TILES = 32  # samples in OUT/t2i_samples.png


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_report(result: Dict[str, Any], name: str = "model") -> str:
    """The accuracies as markdown tables: overall (model and ground truth), then per background kind,
    size and object category."""
    c, s, gt = result["config"], result["summary"], result["ground_truth"]
    header = ["", *(CHECK_NAMES[k] for k in CHECKS), "items", "shape-checkable"]

    def row(label, cell):
        return [label, *(_fmt(cell[k]) for k in CHECKS), str(cell["n"]), str(cell["n_shape"])]

    def table(rows):
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
                *("| " + " | ".join(r) + " |" for r in rows)]

    lines = [f"# Text-to-image prompt following — {name}", "",
             f"{c['items']} single-object prompts (benchmark seed {c['bench_seed']}) at {c['resolution']} px; "
             f"DDIM ({c['spacing']} spacing), {c['steps']} steps, guidance {c['guidance']}, dynamic thresholding "
             f"{threshold_label(c)}, sampling seed "
             f"{c['seed']}.", "",
             "Background: the border ring's dominant colour is the background's (either colour for stripes and "
             "paintings). Colour: the object's dominant palette colour is the prompted one. Position: the "
             "object's box centre is in the prompted 3×3 cell. Colour+position: both. Shape: the best-fitting "
             "re-rendered shape or glyph is the prompted one, over the shape-checkable items only. Ground "
             "truth: the same checks on the world's own renderings — each metric's ceiling.", "",
             "## Overall", "", *table([row(name, s["overall"]), row("ground truth", gt["overall"])])]
    for key, values in BREAKDOWNS.items():
        rows = [row(v, s[f"by_{key}"][v]) for v in values if v in s[f"by_{key}"]]
        lines += ["", f"## By {BREAKDOWN_NAMES[key].lower()}", "", *table(rows)]
    if "text_sensitivity" in result:
        sens = result["text_sensitivity"]
        lines += ["", "## What the text encoder passes on", "",
                  "Mean cosine distance (1 − cos) between the text encoder's outputs for each prompt and for the "
                  "same prompt with one attribute changed (`text_sensitivity`): the pooled embedding, which the "
                  "UNet adds to its time embedding, and the token states averaged over the prompt, a summary of "
                  "what its cross-attention reads. Near 0: the encoder all but drops the attribute.", "",
                  "| Changed attribute | Pooled embedding | Token states (mean) |", "|---|---|---|",
                  *(f"| {a} | {v['pooled']:.4f} | {v['tokens']:.4f} |" for a, v in sens.items())]
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {c['items']} prompts are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def _short(record: Dict[str, Any]) -> Tuple[str, str, str]:
    """The prompt's key words in three lines: 'red letter A', 'top left', 'on blue/white'."""
    lab = record["labels"]
    shape = lab["shape"]
    noun = shape if lab["category"] == "shape" else ("digit " if shape.isdigit() else "letter ") + shape
    where = lab["position"].split(" ", 2)[-1]
    return f"{lab['colour']} {noun}", where, f"on {'/'.join(lab['background_colours'])}"


def sample_grid(result: Dict[str, Any], count: int = GRID_TILES, columns: int = 8, tile: int = 96):
    """A PIL image of the first ``count`` samples, each with its prompt's key words below it and a
    frame: green when colour and position are both right, red otherwise."""
    records, images = result["records"][:count], result["images"][:count]
    label_h, pad = 36, 4
    rows = math.ceil(len(records) / columns)
    sheet = Image.new("RGB", (pad + columns * (tile + pad), pad + rows * (tile + label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (record, image) in enumerate(zip(records, to_pil(images))):
        r, col = divmod(k, columns)
        x, y = pad + col * (tile + pad), pad + r * (tile + label_h + pad)
        ok = record["checks"]["colour_position"]
        draw.rectangle([x - 2, y - 2, x + tile + 1, y + tile + 1], outline=(30, 150, 30) if ok else (200, 30, 30),
                       width=2)
        sheet.paste(image.resize((tile, tile), Image.NEAREST), (x, y))
        for j, text in enumerate(_short(record)):
            draw.text((x, y + tile + 2 + 11 * j), text[: tile // 6], fill="black")
    return sheet


def write_t2i_report(result: Dict[str, Any], out, name: str = "model") -> List[Path]:
    """OUT/t2i.json (everything but the images), OUT/t2i.md (`markdown_report`) and OUT/t2i_samples.png
    (`sample_grid`); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "t2i.json", out / "t2i.md", out / "t2i_samples.png"]
    data = {"name": name, **{k: v for k, v in result.items() if k != "images"}}
    paths[0].write_text(json.dumps(data, indent=1) + "\n")
    paths[1].write_text(markdown_report(result, name))
    sample_grid(result).save(paths[2])
    return paths
