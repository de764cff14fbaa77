"""Writing a text-to-image evaluation: OUT/t2i.json (everything but the images), OUT/t2i.md (the
accuracies with their 95 % intervals as markdown tables), OUT/t2i_samples.png (the first samples,
framed by the verdict), OUT/t2i_two_object_samples.png (the same for two-object prompts) and
OUT/t2i_accuracy.png (the headline accuracies with their intervals; matplotlib)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image, ImageDraw

from ..data.world import SIZES
from ..images import to_pil
from ._shared import threshold_label
from .intervals import format_interval
from .report import have_matplotlib, markdown_table
from .t2i import BREAKDOWNS, CHECKS, PAIR_CHECKS, SIZE_GROUPS

CHECK_NAMES = {"background": "Background", "colour": "Colour", "position": "Position",
               "colour_position": "Colour+position", "shape": "Shape"}
PAIR_CHECK_NAMES = {"background": "Background", "colour_first": "Colour (1st)", "colour_second": "Colour (2nd)",
                    "both_colours": "Both colours", "shape_first": "Shape (1st)", "shape_second": "Shape (2nd)",
                    "relation": "Relative position", "relation_given_colours": "Rel. position, both colours right"}
BREAKDOWN_NAMES = {"background": "Background kind", "size": "Size", "category": "Object"}
GRID_TILES = 32  # samples in OUT/t2i_samples.png


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cell(summary_cell: Dict[str, Any], check: str) -> str:
    """'0.900 [0.851, 0.934]': the accuracy and its 95 % Wilson interval (reports without intervals: the accuracy)."""
    return format_interval(summary_cell[check], summary_cell.get("ci95", {}).get(check))


def _size_rows(s: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, summary cell) for each size class, each pooled group and all sizes."""
    rows = [(v, s["by_size"][v]) for v in SIZES if v in s["by_size"]]
    for g in ("+".join(group) for group in SIZE_GROUPS):
        if g in s.get("by_size_group", {}):
            rows.append((g, s["by_size_group"][g]))
            rows += [(f"{g}, {cat}s", cell) for cat, cell in s.get("by_size_group_category", {}).get(g, {}).items()]
    return rows + [("all", s["overall"])]


def markdown_report(result: Dict[str, Any], name: str = "model") -> str:
    """The accuracies with their 95 % intervals as markdown tables: overall (model and ground truth),
    shape per size class, then per background kind, size and object category, and the two-object
    prompts' checks."""
    c, s, gt = result["config"], result["summary"], result["ground_truth"]
    header = ["", *(CHECK_NAMES[k] for k in CHECKS), "items", "shape-checkable"]

    def row(label, cell):
        return [label, *(_cell(cell, k) for k in CHECKS), str(cell["n"]), str(cell["n_shape"])]

    pairs = c.get("pairs", 0)
    lines = [f"# Text-to-image prompt following — {name}", "",
             f"{c['items']} single-object prompts"
             + (f" and {pairs} two-object prompts" if pairs else "")
             + f" (benchmark seed {c['bench_seed']}) at {c['resolution']} px; "
             f"DDIM ({c['spacing']} spacing), {c['steps']} steps, guidance {c['guidance']}, dynamic thresholding "
             f"{threshold_label(c)}, sampling seed "
             f"{c['seed']}.", "",
             "Background: the border ring's dominant colour is the background's (either colour for stripes and "
             "paintings). Colour: the object's dominant palette colour is the prompted one. Position: the "
             "object's box centre is in the prompted 3×3 cell. Colour+position: both. Shape: the best-fitting "
             "re-rendered shape or glyph is the prompted one, over the shape-checkable items only. Ground "
             "truth: the same checks on the world's own renderings — each metric's ceiling. Every accuracy "
             "carries its 95 % Wilson interval in brackets.", "",
             "## Overall", "", *markdown_table(header, [row(name, s["overall"]), row("ground truth", gt["overall"])])]
    shape_rows = [[label, _cell(cell, "shape"), _cell(gt_cell, "shape"), str(cell["n_shape"]), str(cell["n"])]
                  for (label, cell), (_, gt_cell) in zip(_size_rows(s), _size_rows(gt))]
    lines += ["", "## Shape by size class", "",
              "Shape accuracy over the shape-checkable items of each size class; medium+large pools the two "
              "classes whose shapes a 32-px image can show, then splits them into geometric shapes (6, chance "
              "1/6) and glyphs (14 letters and digits of a 5×7 font).", "",
              *markdown_table(["Size", f"Shape: {name}", "Shape: ground truth", "shape-checkable", "items"], shape_rows)]
    if result.get("shape_confusion"):
        lines += ["", *_confusion_section(result["shape_confusion"])]
    for key, values in BREAKDOWNS.items():
        rows = [row(v, s[f"by_{key}"][v]) for v in values if v in s[f"by_{key}"]]
        lines += ["", f"## By {BREAKDOWN_NAMES[key].lower()}", "", *markdown_table(header, rows)]
    if "two_object" in result:
        lines += ["", *_two_object_section(result["two_object"], name)]
    if "text_sensitivity" in result:
        sens = result["text_sensitivity"]
        lines += ["", "## What the text encoder passes on", "",
                  "Mean cosine distance (1 − cos) between the text encoder's outputs for each prompt and for the "
                  "same prompt with one attribute changed (`text_sensitivity`): the pooled embedding, which the "
                  "UNet adds to its time embedding, and the token states averaged over the prompt, a summary of "
                  "what its cross-attention reads, with 95 % bootstrap intervals. Near 0: the encoder all but "
                  "drops the attribute.", "",
                  "| Changed attribute | Pooled embedding | Token states (mean) |", "|---|---|---|",
                  *(f"| {a} | {format_interval(v['pooled'], v.get('pooled_ci95'), 4)} | "
                    f"{format_interval(v['tokens'], v.get('tokens_ci95'), 4)} |" for a, v in sens.items())]
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {c['items'] + pairs} prompts are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def _confusion_section(confusion: Dict[str, Dict[str, int]]) -> List[str]:
    """Prompted shape (rows) against the shape read back (columns), medium and large shapes."""
    seen = {k for row in confusion.values() for k in row}
    read = [k for k in confusion if k in seen] + sorted(seen - set(confusion) - {"none"}) + ["none"] * ("none" in seen)
    rows = [[shape, *(str(row.get(k, 0)) for k in read), f"{row.get(shape, 0) / sum(row.values()):.2f}"]
            for shape, row in confusion.items()]
    return ["## Which shape is drawn", "",
            "Medium and large geometric shapes: the prompted shape (rows) against the shape read back from the "
            "sample (columns; a glyph when a glyph fitted best, none when no object was found), and the share "
            "read back right.", "", *markdown_table(["Prompted", *read, "right"], rows)]


def _two_object_section(two: Dict[str, Any], name: str) -> List[str]:
    s, gt = two["summary"], two["ground_truth"]
    header = ["", *(PAIR_CHECK_NAMES[k] for k in PAIR_CHECKS), "items"]

    def row(label, cell):
        return [label, *(_cell(cell, k) for k in PAIR_CHECKS), str(cell["n"])]

    scored = s["n_scored"]
    return ["## Two objects", "",
            "Two single-instance objects from the world's sampler, the Full caption naming both and where each "
            "is. An object is found when one of the image's largest blobs has its colour; Colour (1st / 2nd): "
            "that object is found; Both colours: both are. Shape: the found object's blob reads as its shape, "
            f"over the items where the ground truth's does ({scored['shape_first']} and {scored['shape_second']} "
            "of them). Relative position: both are found and their box centres are ordered as the caption's "
            "two cells imply (left of / right of when their columns differ, above / below when their rows do), "
            f"over the {scored['relation']} items whose objects are in different cells; "
            "Rel. position, both colours right: the same among the items where both colours are right "
            f"({scored['relation_given_colours']} for {name}, {gt['n_scored']['relation_given_colours']} for the "
            "ground truth). 95 % Wilson intervals in brackets.", "",
            *markdown_table(header, [row(name, s), row("ground truth", gt)])]


def _short(record: Dict[str, Any]) -> Tuple[str, str, str]:
    """The prompt's key words in three lines: 'red letter A', 'top left', 'on blue/white'."""
    lab = record["labels"]
    shape = lab["shape"]
    noun = shape if lab["category"] == "shape" else ("digit " if shape.isdigit() else "letter ") + shape
    where = lab["position"].split(" ", 2)[-1]
    return f"{lab['colour']} {noun}", where, f"on {'/'.join(lab['background_colours'])}"


def _short_pair(record: Dict[str, Any]) -> Tuple[str, str, str]:
    """Two objects' key words: 'red circle left', 'blue A top right', 'on white'."""
    lines = []
    for obj in record["labels"]["objects"]:
        lines.append(f"{obj['colour']} {obj['shape']} {obj['position'].split(' ', 2)[-1]}")
    return lines[0], lines[1], f"on {'/'.join(record['labels']['background_colours'])}"


def sample_grid(result: Dict[str, Any], count: int = GRID_TILES, columns: int = 8, tile: int = 96, *,
                pairs: bool = False):
    """A PIL image of the first ``count`` samples, each with its prompt's key words below it and a
    frame: green when colour and position (two objects: both colours and their relative position)
    are right, red otherwise."""
    if pairs:
        records, images = result["two_object"]["records"][:count], result["pair_images"][:count]
    else:
        records, images = result["records"][:count], result["images"][:count]
    label_h, pad = 36, 4
    rows = math.ceil(len(records) / columns)
    sheet = Image.new("RGB", (pad + columns * (tile + pad), pad + rows * (tile + label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (record, image) in enumerate(zip(records, to_pil(images))):
        r, col = divmod(k, columns)
        x, y = pad + col * (tile + pad), pad + r * (tile + label_h + pad)
        checks = record["checks"]
        ok = (checks["both_colours"] and checks["relation"] is not False) if pairs else checks["colour_position"]
        draw.rectangle([x - 2, y - 2, x + tile + 1, y + tile + 1], outline=(30, 150, 30) if ok else (200, 30, 30),
                       width=2)
        sheet.paste(image.resize((tile, tile), Image.NEAREST), (x, y))
        for j, text in enumerate(_short_pair(record) if pairs else _short(record)):
            draw.text((x, y + tile + 2 + 11 * j), text[: tile // 6], fill="black")
    return sheet


def accuracy_chart(result: Dict[str, Any], path, name: str = "model") -> Path:
    """OUT/t2i_accuracy.png: the single-object accuracies, shape per size class and the two-object
    checks, the model's bars beside the ground truth's, each with its 95 % interval."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    s, gt = result["summary"], result["ground_truth"]
    panels = [("Single object", [(CHECK_NAMES[k], s["overall"], gt["overall"], k) for k in CHECKS]),
              ("Shape by size class", [(label, cell, gt_cell, "shape")
                                       for (label, cell), (_, gt_cell) in zip(_size_rows(s), _size_rows(gt))])]
    if "two_object" in result:
        two = result["two_object"]
        panels.append(("Two objects", [(PAIR_CHECK_NAMES[k], two["summary"], two["ground_truth"], k)
                                       for k in PAIR_CHECKS]))
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    width = 0.4
    for p, (title, bars) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for j, (label, key) in enumerate(((name, 1), ("ground truth", 2))):
            xs = [i + (j - 0.5) * width for i in range(len(bars))]
            values, low, high = [], [], []
            for bar in bars:
                cell, check = bar[key], bar[3]
                v, ci = cell[check], cell.get("ci95", {}).get(check)
                values.append(v if v is not None else 0.0)
                low.append(v - ci[0] if ci is not None and v is not None else 0.0)
                high.append(ci[1] - v if ci is not None and v is not None else 0.0)
            ax.bar(xs, values, width, yerr=[low, high], capsize=2, label=label)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=35, ha="right", fontsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        if p == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"Text-to-image prompt following — {name} (95 % Wilson intervals)")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_t2i_report(result: Dict[str, Any], out, name: str = "model", *, plots: bool = True) -> List[Path]:
    """OUT/t2i.json (everything but the images), OUT/t2i.md (`markdown_report`), OUT/t2i_samples.png
    (`sample_grid`), with two-object prompts OUT/t2i_two_object_samples.png, and with ``plots``
    OUT/t2i_accuracy.png (`accuracy_chart`; needs matplotlib); returns the paths."""
    if plots and not have_matplotlib():
        raise RuntimeError("the t2i plot needs matplotlib: pip install 'diffrt[eval]' (or plots=False)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "t2i.json", out / "t2i.md", out / "t2i_samples.png"]
    data = {"name": name, **{k: v for k, v in result.items() if k not in ("images", "pair_images")}}
    paths[0].write_text(json.dumps(data, indent=1) + "\n")
    paths[1].write_text(markdown_report(result, name))
    sample_grid(result).save(paths[2])
    if "two_object" in result:
        paths.append(out / "t2i_two_object_samples.png")
        sample_grid(result, pairs=True).save(paths[-1])
    if plots:
        paths.append(accuracy_chart(result, out / "t2i_accuracy.png", name))
    return paths
