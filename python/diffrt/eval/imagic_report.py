"""Writing an Imagic evaluation: OUT/imagic.json (config, summary, per-output records),
OUT/imagic.md (the measures per η with their 95 % intervals — the trade-off curve — and the best
η), OUT/imagic.png (edit success, background kept and background PSNR against η per attribute,
with interval bands; matplotlib) and OUT/imagic_examples.png (per example item: input, target
rendering and the output at every η)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from PIL import Image, ImageDraw

from ..images import to_pil
from .imagic import ATTRIBUTES, BEST_BY, MEASURES, OTHER_ATTRIBUTE, REFERENCE_NAMES, REFERENCES
from .intervals import format_interval
from .report import markdown_table, write_report_files

MEASURE_NAMES = {"edit_success": "Edit success", "background_kept": "Background kept",
                 "position_kept": "Position kept", "other_kept": "Other attribute kept",
                 "success_background_kept": "Success, background kept", "background_psnr": "Background PSNR (dB)",
                 "image_psnr": "Image PSNR (dB)"}
MEANS = ("background_psnr", "image_psnr")
PLOTTED = ("edit_success", "background_kept", "background_psnr")


def _fmt(measure: str, cell: Optional[Dict[str, Any]]) -> str:
    if cell is None:
        return "–"
    return format_interval(cell["value"], cell["ci95"], 1 if measure in MEANS else 3)


def _row(label: str, cell: Dict[str, Any]) -> List[str]:
    other = cell["other_kept"]["n"] if cell["other_kept"] else 0
    return [label, *(_fmt(m, cell[m]) for m in MEASURES), f"{cell['n']} ({other})"]


def _table(s: Dict[str, Any], attribute: Optional[str] = None) -> List[str]:
    """One row per η, then the references, for all items or one attribute's."""
    def pick(scopes):
        return scopes["overall"] if attribute is None else scopes["by_attribute"].get(attribute)

    rows = [_row(f"{entry['eta']:g}", cell) for entry in s["by_eta"] if (cell := pick(entry)) is not None]
    rows += [_row(REFERENCE_NAMES[ref], cell) for ref in REFERENCES
             if ref in s["references"] and (cell := pick(s["references"][ref])) is not None]
    header = ["η", *(MEASURE_NAMES[m] for m in MEASURES), "items (other-checkable)"]
    return markdown_table(header, rows)


def markdown_report(result: Dict[str, Any], name: str = "model") -> str:
    """The trade-off curve (every measure per η, with the unedited input and the target rendering
    beside it), the best η and the η = 0 reconstruction, overall and per attribute."""
    c, s = result["config"], result["summary"]
    lines = [f"# Imagic's edit / preservation trade-off — {name}", "",
             f"{c['items']} edits (benchmark seed {c['bench_seed']}; even items change the object's colour, odd "
             f"items its shape) at {c['resolution']} px; the base model as text-to-image. Per item: stage A "
             f"optimises the target prompt's embedding for {c['embedding_steps']} steps (learning rate "
             f"{c['embedding_lr']:g}), stage B fine-tunes the whole model for {c['finetune_steps']} steps (learning "
             f"rate {c['finetune_lr']:g}), stage C samples η ∈ {{{', '.join(f'{e:g}' for e in c['etas'])}}} from "
             f"one noise with DDIM ({c['spacing']} spacing, {c['steps']} steps, guidance {c['guidance']:g}); sampling "
             f"seed {c['seed']}.", "",
             "Each item is a single-object scene of the world's sampler and the same scene with the object's "
             "colour or shape changed; Imagic gets the input and the target scene's Full caption. Every output "
             "is checked with the text-to-image checks against the target scene. Edit success: the edited "
             "attribute reads the target's value. Background kept: the border ring shows the background's colour. "
             "Position kept: the object's centre lies in its cell. Other attribute kept: the object's shape (colour "
             "edits) or colour (shape edits), scored on the items whose renderings pass that check (the "
             "number in brackets). Success, background kept: both. Background PSNR: against the input outside "
             f"the pixels a perfect edit changes (an untouched background counts {c['psnr_cap']:g} dB); image PSNR: "
             "against the whole input. The unedited input and the re-rendered target bound every measure. 95 % "
             "intervals in brackets: Wilson for proportions, bootstrap for means.", "",
             "## Trade-off curve: all items", "", *_table(s)]
    best = s["best_eta"]
    if best is not None:
        lines += ["", f"**Best η: {best['eta']:g}** (the highest '{MEASURE_NAMES[BEST_BY]}'; ties go to the smaller "
                      "η) — " + "; ".join(f"{MEASURE_NAMES[m]} {_fmt(m, best[m])}"
                                         for m in MEASURES if best[m] is not None) + "."]
    recon = s["reconstruction_psnr"]
    lines += ["", "Reconstruction: η = 0 is not in the sweep." if recon is None else
              f"Reconstruction (η = 0, stages A and B): image PSNR {_fmt('image_psnr', recon)} dB against the "
              "whole input."]
    for attribute in ATTRIBUTES:
        if any(attribute in entry["by_attribute"] for entry in s["by_eta"]):
            lines += ["", f"## Trade-off curve: {attribute} edits (other attribute: {OTHER_ATTRIBUTE[attribute]})",
                      "", *_table(s, attribute)]
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {c['items']} target prompts are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def chart(result: Dict[str, Any], path, name: str = "model") -> Path:
    """OUT/imagic.png: edit success, background kept and background PSNR against η, one line per
    attribute (and all) with its 95 % interval as a band."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    s = result["summary"]
    fig = Figure(figsize=(4.4 * len(PLOTTED), 3.6), layout="constrained")
    for k, measure in enumerate(PLOTTED):
        ax = fig.add_subplot(1, len(PLOTTED), k + 1)
        for group in (*ATTRIBUTES, "all"):
            points = [(entry["eta"], cell[measure]) for entry in s["by_eta"]
                      if (cell := entry["overall"] if group == "all" else entry["by_attribute"].get(group))
                      and cell[measure] is not None]
            if not points:
                continue
            etas = [eta for eta, _ in points]
            line, = ax.plot(etas, [p["value"] for _, p in points], marker="o", label=group,
                            linewidth=2 if group == "all" else 1.2)
            ax.fill_between(etas, [p["ci95"][0] for _, p in points], [p["ci95"][1] for _, p in points],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("η")
        ax.set_title(MEASURE_NAMES[measure])
        if measure not in MEANS:
            ax.set_ylim(-0.02, 1.02)
        if k == 0:
            ax.legend(fontsize="small")
    fig.suptitle(f"Imagic: edit against preservation per η — {name} (95 % intervals)")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def example_grid(result: Dict[str, Any], tile: int = 96):
    """A PIL image: one row per example item — the input, the re-rendered target and the output
    at every η — under a line naming the edit and the target prompt."""
    etas = result["config"]["etas"]
    columns = ["input", "target", *(f"eta {eta:g}" for eta in etas)]
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
        draw.text((pad, y + 1), f"#{item.index} {item.attribute}: {item.source_value} -> {item.target_value} "
                                f"({item.target_prompt})"[:160], fill="black")
        y += label_h
        tiles = torch.cat([item.image[None], item.target_image[None], ex["outputs"]]).float().clamp(-1, 1)
        for k, image in enumerate(to_pil(tiles)):
            sheet.paste(image.resize((tile, tile), Image.NEAREST), (pad + k * (tile + pad), y))
        y += tile + pad
    return sheet


def write_imagic_report(result: Dict[str, Any], out, name: str = "model", *, plots: bool = True) -> List[Path]:
    """OUT/imagic.json, OUT/imagic.md (`markdown_report`), with ``plots`` OUT/imagic.png (`chart`;
    needs matplotlib) and, with examples, OUT/imagic_examples.png; returns the paths."""
    return write_report_files(result, out, "imagic", name, what="Imagic", markdown=markdown_report, chart=chart,
                              example_grid=example_grid, plots=plots)
