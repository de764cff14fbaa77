"""Writing a DiffEdit evaluation: OUT/diffedit.json (config, summary, per-edit records),
OUT/diffedit.md (the measures with their 95 % intervals as markdown tables), OUT/diffedit.png (the
measures per method and attribute with their intervals; matplotlib) and OUT/diffedit_examples.png
(input, target, true region, DiffEdit's mask and each method's edit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from PIL import Image, ImageDraw

from ..images import to_pil
from .diffedit import ATTRIBUTES, METHOD_NAMES, METHODS, PSNR_BAR, REFERENCES
from .intervals import format_interval
from .report import format_delta, markdown_table, write_report_files

MEASURE_NAMES = {"edit_success": "Edit success", "background_psnr": "Background PSNR (dB)",
                 "background_kept": f"Background ≥ {PSNR_BAR:g} dB",
                 "success_psnr": f"Success, background ≥ {PSNR_BAR:g} dB", "mask_iou": "Mask IoU"}
COLUMNS = ("edit_success", "background_psnr", "background_kept", "success_psnr", "mask_iou")
PLOTTED = ("edit_success", "success_psnr", "background_psnr", "mask_iou")


def _fmt(measure: str, cell: Optional[Dict[str, Any]]) -> str:
    if cell is None:
        return "–"
    return format_interval(cell["value"], cell["ci95"], 1 if measure == "background_psnr" else 3)


def _delta(cell: Dict[str, Any]):
    """A difference cell {"value", "ci95"} as report.format_delta takes it (None when there is none)."""
    return None if cell["value"] is None else (cell["value"], *cell["ci95"])


def _methods(summary: Dict[str, Any]) -> List[str]:
    return [m for m in (*METHODS, *REFERENCES) if m in summary]


def markdown_report(result: Dict[str, Any], name: str = "model") -> str:
    """The measures with their 95 % intervals: overall per method, DiffEdit − SDEdit, and per
    attribute and size class of the edited object."""
    c, s = result["config"], result["summary"]
    header = ["Method", *(MEASURE_NAMES[m] for m in COLUMNS), "items"]

    def rows(key: Optional[str] = None, value: Optional[str] = None):
        out = []
        for method in _methods(s):
            cell = s[method]["overall"] if key is None else s[method][key].get(value)
            if cell is not None:
                out.append([METHOD_NAMES[method], *(_fmt(m, cell[m]) for m in COLUMNS), str(cell["n"])])
        return out

    lines = [f"# DiffEdit against SDEdit — {name}", "",
             f"{c['items']} edits (benchmark seed {c['bench_seed']}; even items change an object's colour, odd items "
             f"its shape) at {c['resolution']} px; the base model as text-to-image, DDIM ({c['spacing']} spacing) "
             f"with {c['steps']} steps of which the last {c['decode_steps']} run (strength {c['strength']}), decoding "
             f"guidance {c['guidance']}; DiffEdit's mask from {c['mask_n']} noise draws at strength "
             f"{c.get('mask_strength', c['strength'])}, unguided, {_mask_recipe(c)}; sampling seed "
             f"{c['seed']}.", "",
             "Each item is a scene of the world's sampler and the same scene with one attribute of one object "
             "changed; the source and target captions are the two scenes' Full captions. The true region is the "
             "edited object's pixels in the input and in the re-rendered target; the changed pixels add the "
             "anti-aliased fringe where the two renderings differ. Edit success: the attribute read back inside "
             "the changed pixels (EditBench's attribute check against the re-rendered target) is the target's. "
             "Background PSNR: outside the changed pixels, an untouched background counting "
             "100 dB. Mask IoU: DiffEdit's automatic mask against the true region. SDEdit: the input noised to "
             "the same strength and denoised under the target caption, no mask. DiffEdit, true mask: DiffEdit "
             "handed the true region. The unedited input and the re-rendered target bound every measure; the true "
             "region filled with the target colour is what a blob of the right colour scores (for shape edits, "
             "the larger of the two shapes is what a blob reads as). "
             "95 % intervals in brackets: Wilson for proportions, bootstrap for means.", "",
             "## Overall", "", *markdown_table(header, rows())]
    if "diffedit" in s and "mask_area" in s["diffedit"]:
        area, true = s["diffedit"]["mask_area"], s["diffedit"]["true_area"]
        lines += ["", f"DiffEdit's masks cover {format_interval(area['value'], area['ci95'])} of the image on "
                      f"average; the true regions {format_interval(true['value'], true['ci95'])}."]
    if "diffedit_vs_sdedit" in s:
        measures = ("edit_success", "background_psnr", "background_kept", "success_psnr")
        delta_rows = [[scope, *(format_delta(m, _delta(s["diffedit_vs_sdedit"][scope][m])) for m in measures),
                       str(s["diffedit_vs_sdedit"][scope]["edit_success"]["n"])]
                      for scope in ("all", *ATTRIBUTES) if scope in s["diffedit_vs_sdedit"]]
        lines += ["", "## DiffEdit − SDEdit", "",
                  "The difference on the same items, with its 95 % paired-bootstrap interval (the items resampled, "
                  "each keeping its pair of scores): clear when the interval excludes 0.", "",
                  *markdown_table(["Items", *(f"Δ {MEASURE_NAMES[m]}" for m in measures), "items"], delta_rows)]
    for key, title, values in (("by_attribute", "attribute", ATTRIBUTES), ("by_size", "size of the edited object",
                                                                          ("small", "medium", "large"))):
        for value in values:
            chosen = rows(key, value)
            if chosen:
                lines += ["", f"## By {title}: {value}", "", *markdown_table(header, chosen)]
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {2 * c['items']} captions are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def chart(result: Dict[str, Any], path, name: str = "model") -> Path:
    """OUT/diffedit.png: edit success, success with the background kept, background PSNR and mask
    IoU per attribute (and all), one bar per method, each with its 95 % interval."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    s = result["summary"]
    methods = [m for m in METHODS if m in s]
    groups = [*ATTRIBUTES, "all"]
    fig = Figure(figsize=(4.2 * len(PLOTTED), 3.6), layout="constrained")
    width = 0.8 / len(methods)
    for k, measure in enumerate(PLOTTED):
        ax = fig.add_subplot(1, len(PLOTTED), k + 1)
        for j, method in enumerate(methods):
            cells = [s[method]["overall"] if g == "all" else s[method]["by_attribute"].get(g) for g in groups]
            cells = [None if cell is None else cell[measure] for cell in cells]
            values = [cell["value"] if cell else 0.0 for cell in cells]
            low = [cell["value"] - cell["ci95"][0] if cell else 0.0 for cell in cells]
            high = [cell["ci95"][1] - cell["value"] if cell else 0.0 for cell in cells]
            ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(groups))], values, width,
                   yerr=[low, high], capsize=2, label=METHOD_NAMES[method])
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(MEASURE_NAMES[measure])
        if measure != "background_psnr":
            ax.set_ylim(0, 1.05)
        else:
            ax.axhline(PSNR_BAR, color="grey", linewidth=0.8, linestyle="--")
        if k == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"DiffEdit against SDEdit — {name} (95 % intervals)")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with the mask's pixels painted red."""
    out = image.clone()
    inside = mask.reshape(image.shape[-2:]).bool()
    out[0][inside], out[1][inside], out[2][inside] = 1.0, -1.0, -1.0
    return out


def example_grid(result: Dict[str, Any], tile: int = 96):
    """A PIL image: one row per example item — input, re-rendered target, the true region and
    DiffEdit's mask in red over the input, and each method's edit."""
    methods = [m for m in METHODS if all(m in ex for ex in result["examples"])]
    columns = ["input", "target", "true region", "DiffEdit mask", *(METHOD_NAMES[m] for m in methods)]
    label_h, pad = 14, 4
    width = pad + len(columns) * (tile + pad)
    height = label_h + len(result["examples"]) * (label_h + tile + pad) + pad
    sheet = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(columns):
        draw.text((pad + k * (tile + pad), 2), title, fill="black")
    y = label_h
    for ex in result["examples"]:
        item = ex["item"]
        tiles = [item.image, item.target_image, _overlay(item.image, item.edit_region), _overlay(item.image, ex["mask"]),
                 *(ex[m] for m in methods)]
        draw.text((pad, y + 1), f"#{item.index} {item.attribute}: {item.source_labels[item.attribute]} -> "
                                f"{item.labels[item.attribute]} ({item.prompts['full']})"[:160], fill="black")
        y += label_h
        for k, image in enumerate(to_pil(torch.stack([t.float().clamp(-1, 1) for t in tiles]))):
            sheet.paste(image.resize((tile, tile), Image.NEAREST), (pad + k * (tile + pad), y))
        y += tile + pad
    return sheet


def _mask_recipe(c: Dict[str, Any]) -> str:
    smooth = c.get("mask_smooth", 0)
    blur = f"box-blurred over radius {smooth}, " if smooth else ""
    if c.get("mask_normalise", "mean") == "max":
        return f"{blur}divided by its maximum and binarised at {c.get('mask_threshold', 0.5)}"
    return f"{blur}clamped at 3× its mean, divided by that and binarised at {c.get('mask_threshold', 0.5)}"


def write_diffedit_report(result: Dict[str, Any], out, name: str = "model", *, plots: bool = True) -> List[Path]:
    """OUT/diffedit.json, OUT/diffedit.md (`markdown_report`), with ``plots`` OUT/diffedit.png (`chart`;
    needs matplotlib) and, with examples, OUT/diffedit_examples.png; returns the paths."""
    return write_report_files(result, out, "diffedit", name, what="DiffEdit", markdown=markdown_report, chart=chart,
                              example_grid=example_grid, plots=plots)
