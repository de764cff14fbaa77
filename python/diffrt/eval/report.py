"""Writing EditBench results: JSON, markdown tables, bar charts and a grid of example edits.

    OUT/editbench.json              config, every breakdown, the per-(item, prompt) records
    OUT/editbench.md                the breakdowns as markdown tables (Mask-Simple / Mask-Rich / Full)
    OUT/editbench_by_attribute.png  bar charts per attribute category   (matplotlib)
    OUT/editbench_by_mask_size.png  bar charts per mask size            (matplotlib)
    OUT/editbench_examples.png      input, ground truth, the three edits and DiffEdit's mask
    OUT/editbench_compare.md/.json  several models side by side, per mask size (`write_comparison`)

matplotlib is imported only for the charts (the ``eval`` extra); everything else needs PIL alone.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..images import to_pil
from ._shared import threshold_label
from .design import BREAKDOWNS, MASK_SIZES, PROMPT_NAMES, PROMPT_TYPES
from .metrics import METRICS, EditBenchResult

METRIC_NAMES = {
    "clip_score": "CLIPScore",
    "clip_r_precision": "CLIP-R-Precision",
    "attribute_accuracy": "Attribute acc.",
    "colour_accuracy": "Colour acc.",
    "shape_accuracy": "Shape acc.",
    "count_accuracy": "Count acc.",
    "background_psnr": "Background PSNR (dB)",
    "diffedit_iou": "DiffEdit IoU",
}
BREAKDOWN_NAMES = {"mask_size": "Mask size", "attribute": "Attribute", "object_category": "Object",
                   "scene": "Scene"}
# text alignment, EditBench's question
HEADLINE = ("clip_score", "clip_r_precision", "attribute_accuracy", "colour_accuracy")


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_report_files(result: Dict[str, Any], out, stem: str, name: str, *, what: str, markdown, chart,
                       example_grid, plots: bool = True) -> List[Path]:
    """OUT/STEM.json (the result but its examples), OUT/STEM.md (``markdown(result, name)``), with
    ``plots`` OUT/STEM.png (``chart(result, path, name)``; needs matplotlib) and, when the result has
    examples, OUT/STEM_examples.png (``example_grid(result)``); returns the paths. ``what`` names the
    evaluation in the error for a missing matplotlib."""
    if plots and not have_matplotlib():
        raise RuntimeError(f"the {what} plot needs matplotlib: pip install 'diffrt[eval]' (or plots=False)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    data = {"name": name, **{k: v for k, v in result.items() if k != "examples"}}
    paths[0].write_text(json.dumps(data, indent=1) + "\n")
    paths[1].write_text(markdown(result, name))
    if plots:
        paths.append(chart(result, out / f"{stem}.png", name))
    if result.get("examples"):
        paths.append(out / f"{stem}_examples.png")
        example_grid(result).save(paths[-1])
    return paths


def _fmt(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if metric == "background_psnr" else f"{value:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A markdown table: the header row, the separator and one row per entry."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown_report(result: EditBenchResult) -> str:
    """The summary as markdown: overall per prompt type, then each breakdown with every cell
    'Mask-Simple / Mask-Rich / Full'."""
    c = result.config
    lines = [f"# EditBench — {result.name}", "",
             f"{c['items']} items × 3 prompts at {c['resolution']} px (model output {c['model_resolution']} px"
             f"{', with super-resolution' if c['super_resolution'] else ''}); {c['steps']} DDIM steps, guidance "
             f"{c['guidance']}, dynamic thresholding {threshold_label(c)}, "
             f"sampling seed {c['seed']}, benchmark seed {c['bench_seed']}; DiffEdit masks from "
             f"{c['diffedit_n']} noise draws at strength {c['diffedit_strength']} "
             f"({c.get('diffedit_normalise', 'mean')}-normalised, smoothed over {c.get('diffedit_smooth', 0)} px, "
             f"threshold {c.get('diffedit_threshold', 0.5)}). Mask sizes: small < "
             f"{c['mask_size_bins'][0]:.1%} ≤ medium < {c['mask_size_bins'][1]:.1%} ≤ large (of the image).",
             "", "Attribute acc. checks the attribute each item edits; colour, shape and count accuracy are "
             "checked on every item. Background PSNR is over the pixels outside the mask, on the model's raw "
             "output (no composite).", "", "## Overall", ""]
    overall = result.summary["overall"]
    rows = [[PROMPT_NAMES.get(p, "All"), *(_fmt(m, overall[p][m]) for m in METRICS), str(overall[p]["n"])]
            for p in (*PROMPT_TYPES, "all")]
    lines += markdown_table(["Prompt", *(METRIC_NAMES[m] for m in METRICS), "n"], rows)
    for key, values in BREAKDOWNS.items():
        table = result.summary[f"by_{key}"]
        lines += ["", f"## By {BREAKDOWN_NAMES[key].lower()} (Mask-Simple / Mask-Rich / Full)", ""]
        rows = []
        for v in values:
            if v not in table["all"]:
                continue
            cells = [" / ".join(_fmt(m, table[p][v][m]) if v in table[p] else "–" for p in PROMPT_TYPES)
                     for m in METRICS]
            rows.append([v, *cells, str(table["all"][v]["n"] // len(PROMPT_TYPES))])
        lines += markdown_table([BREAKDOWN_NAMES[key], *(METRIC_NAMES[m] for m in METRICS), "items"], rows)
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {3 * c['items']} prompts are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def _bar_chart(result: EditBenchResult, key: str, path: Path) -> Path:
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    table = result.summary[f"by_{key}"]
    values = [v for v in BREAKDOWNS[key] if v in table["all"]]
    fig = Figure(figsize=(4.2 * len(HEADLINE), 3.4), layout="constrained")
    width = 0.8 / len(PROMPT_TYPES)
    for k, metric in enumerate(HEADLINE):
        ax = fig.add_subplot(1, len(HEADLINE), k + 1)
        for j, p in enumerate(PROMPT_TYPES):
            heights = [table[p].get(v, {}).get(metric) for v in values]
            ax.bar([i + (j - 1) * width for i in range(len(values))], [h if h is not None else 0 for h in heights],
                   width, label=PROMPT_NAMES[p])
        ax.set_xticks(range(len(values)), values, rotation=20 if key != "mask_size" else 0)
        ax.set_title(METRIC_NAMES[metric])
        if metric != "clip_score":
            ax.set_ylim(0, 1)
        if k == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"EditBench — {result.name}, by {BREAKDOWN_NAMES[key].lower()}")
    fig.savefig(path, dpi=100)
    return path


def example_grid(result: EditBenchResult, tile: int = 96):
    """A PIL image: one row per example item — masked input, ground truth, the Mask-Simple,
    Mask-Rich and Full edits, and DiffEdit's mask (Mask-Rich prompts) in red over the input."""
    columns = ["input + mask", "ground truth", *(PROMPT_NAMES[p] for p in PROMPT_TYPES), "DiffEdit mask"]
    label_h, pad = 14, 4
    rows = []
    for ex in result.examples:
        item = ex["item"]
        masked = item.image * (1 - item.mask)  # the repainted region shown grey
        tiles = [masked, item.target_image, *(ex.get(p, torch.zeros_like(item.image)) for p in PROMPT_TYPES)]
        de = ex.get("diffedit_rich")
        if de is not None:
            overlay = item.image.clone()
            overlay[0] = torch.where(de[0].bool(), torch.ones_like(overlay[0]), overlay[0])
            tiles.append(overlay)
        rows.append((f"#{item.index} {item.attribute}, {item.mask_size} mask, {item.object_category}: "
                     f"{item.source_prompts['rich']} -> {item.prompts['rich']}", tiles))
    width = pad + len(columns) * (tile + pad)
    height = label_h + sum(label_h + tile + pad for _ in rows) + pad
    sheet = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(columns):
        draw.text((pad + k * (tile + pad), 2), name, fill="black")
    y = label_h
    for label, tiles in rows:
        draw.text((pad, y + 1), label[:160], fill="black")
        y += label_h
        for k, image in enumerate(to_pil(torch.stack([t.float().clamp(-1, 1) for t in tiles]))):
            sheet.paste(image.resize((tile, tile), Image.NEAREST), (pad + k * (tile + pad), y))
        y += tile + pad
    return sheet


def write_report(result: EditBenchResult, out, *, plots: bool = True) -> List[Path]:
    """Write the JSON, markdown, charts (``plots``; needs matplotlib) and example grid; returns the paths."""
    out = Path(out)
    if plots and not have_matplotlib():
        raise RuntimeError("the EditBench plots need matplotlib: pip install 'diffrt[eval]' (or plots=False)")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "editbench.json", out / "editbench.md"]
    written[0].write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    written[1].write_text(markdown_report(result))
    if plots:
        written.append(_bar_chart(result, "attribute", out / "editbench_by_attribute.png"))
        written.append(_bar_chart(result, "mask_size", out / "editbench_by_mask_size.png"))
    if result.examples:
        path = out / "editbench_examples.png"
        example_grid(result).save(path)
        written.append(path)
    return written


BOOTSTRAP_RESAMPLES = 2000


def paired_difference(first: EditBenchResult, second: EditBenchResult, metric: str, prompt_type: str,
                      mask_size: Optional[str] = None, *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> Optional[Tuple[float, float, float]]:
    """Δ = mean(second) − mean(first) of ``metric`` over the items both models scored (one prompt
    type, one mask size or all), with a 95 % paired-bootstrap interval: items are resampled with
    replacement and each keeps its pair of scores, so the interval reflects the spread of the
    per-item differences (both models saw the same items and the same noise). None when no item
    has the metric."""
    def cells(result):
        return {r["index"]: r[metric] for r in result.records
                if r["prompt_type"] == prompt_type and (mask_size is None or r["mask_size"] == mask_size)
                and r.get(metric) is not None}

    a, b = cells(first), cells(second)
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    diff = np.array([b[i] - a[i] for i in shared], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    lo, hi = np.quantile(diff[picks].mean(axis=1), [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi)


def format_delta(metric: str, d: Optional[Tuple[float, float, float]]) -> str:
    """A difference with its interval, signed; PSNR to 0.1 dB, the rest to 0.001."""
    if d is None:
        return "–"
    digits = 1 if metric == "background_psnr" else 3
    return f"{d[0]:+.{digits}f} [{d[1]:+.{digits}f}, {d[2]:+.{digits}f}]"


def comparison_markdown(results: Mapping[str, EditBenchResult], metrics: Sequence[str] = HEADLINE) -> str:
    """Models side by side per mask size — the table of Imagen Editor's masking ablation: one table
    per metric, rows = mask size, columns = each model under each prompt type (and, for two models,
    their difference second − first with its 95 % paired-bootstrap interval, `paired_difference`)."""
    names = list(results)
    if not names:
        raise ValueError("results must hold at least one model")
    first = results[names[0]].config
    for name in names[1:]:
        c = results[name].config
        if (c["items"], c["bench_seed"], c["resolution"]) != (first["items"], first["bench_seed"], first["resolution"]):
            raise ValueError(f"{name} ran on a different benchmark ({c['items']} items, seed {c['bench_seed']}, "
                             f"{c['resolution']} px) than {names[0]}; compare runs on the same items")
    lines = [f"# EditBench comparison: {', '.join(names)}", "",
             f"{first['items']} items at {first['resolution']} px, {first['steps']} DDIM steps, guidance "
             f"{first['guidance']}, dynamic thresholding {threshold_label(first)}, the same noise for "
             "every model; one CLIP scores all of them.", ""]
    delta = len(names) == 2
    if delta:
        lines += [f"Δ = {names[1]} − {names[0]}, with a 95 % paired-bootstrap interval over the items "
                  f"({BOOTSTRAP_RESAMPLES} resamples): a difference is clear when its interval excludes 0.", ""]
    for metric in metrics:
        header = ["Mask size"]
        for p in PROMPT_TYPES:
            header += [f"{PROMPT_NAMES[p]}: {n}" for n in names] + ([f"{PROMPT_NAMES[p]}: Δ"] if delta else [])
        rows = []
        for size in (*MASK_SIZES, "all"):
            row = [size]
            for p in PROMPT_TYPES:
                vals = []
                for n in names:
                    s = results[n].summary
                    cell = s["overall"][p] if size == "all" else s["by_mask_size"][p].get(size)
                    vals.append(None if cell is None else cell[metric])
                row += [_fmt(metric, v) for v in vals]
                if delta:
                    d = paired_difference(results[names[0]], results[names[1]], metric, p,
                                          None if size == "all" else size)
                    row.append(format_delta(metric, d))
            rows.append(row)
        lines += [f"## {METRIC_NAMES[metric]}", "", *markdown_table(header, rows), ""]
    return "\n".join(lines)


def write_comparison(results: Mapping[str, EditBenchResult], out) -> List[Path]:
    """OUT/editbench_compare.md (`comparison_markdown`) and OUT/editbench_compare.json (each model's
    config and summary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "editbench_compare.md", out / "editbench_compare.json"
    md.write_text(comparison_markdown(results))
    js.write_text(json.dumps({n: {"config": r.config, **r.summary} for n, r in results.items()}, indent=1) + "\n")
    return [md, js]


__all__ = ["comparison_markdown", "example_grid", "have_matplotlib", "markdown_report", "paired_difference",
           "write_comparison", "write_report"]
