"""Writing an unCLIP evaluation: OUT/unclip.json (config, summary, records), OUT/unclip.md (the
measures with their 95 % intervals), OUT/unclip.png (what variations keep, per method, and the text
diff's trade-off against its amount; matplotlib) and OUT/unclip_examples.png (per input: its
variations, its embedding decoded from fresh noise, its text diffs and its interpolation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from PIL import Image, ImageDraw

from ..images import to_pil
from .intervals import format_interval
from .report import markdown_table, write_report_files
from .unclip import KEPT, METHOD_NAMES, VARIATION_METHODS

KEPT_NAMES = {"background": "Background kept", "colour": "Colour kept", "position": "Position kept",
              "shape": "Shape kept", "all": "Colour + background + position"}
TEXT_DIFF_NAMES = {"moved": "Colour moved to the target", "background_kept": "Background kept",
                   "position_kept": "Position kept", "moved_kept": "Moved, background and position kept"}


def _fmt(cell: Optional[Dict[str, Any]], digits: int = 3) -> str:
    if cell is None or cell["value"] is None:
        return "–"
    return format_interval(cell["value"], cell["ci95"], digits)


def markdown_report(result: Dict[str, Any], name: str = "model") -> str:
    c, s = result["config"], result["summary"]
    lines = [f"# unCLIP: variations, interpolation and text diffs — {name}", "",
             f"{c['items']} single-object scenes of the t2i benchmark (seed {c['bench_seed']}) at {c['resolution']} px "
             f"(CLIP at {c['clip_resolution']} px); the decoder alone, DDIM ({c['spacing']} spacing) with {c['steps']} "
             f"steps and guidance {c['guidance']}; {c['variations']} variations per input and method, variation "
             f"η {c['eta']}; variations and text diffs decode the input's DDIM inversion at guidance "
             f"{c.get('inversion_guidance', c['guidance'])}; sampling seed {c['seed']}, batches of "
             f"{c['batch_size']}.", "",
             "Every output is checked with the t2i checks against the labels of the scene it should keep: the "
             "background's colour, the object's colour, its 3×3 cell and (on shape-checkable items) its shape. "
             "Diversity: RMS pixel distance between two outputs of one input; distance: of an output from its "
             "input (images in [−1, 1]). 95 % intervals in brackets: Wilson for proportions, bootstrap for means.",
             "", "## Variations", "",
             "Variations decode the input's CLIP image embedding from the decoder's DDIM inversion of the input "
             "with η noise (the paper's method); \"embedding only\" decodes the same embedding from fresh noise, so "
             "it shows what the embedding itself keeps.", ""]
    header = ["Method", *(KEPT_NAMES[k] for k in KEPT), "Diversity", "Distance to input", "outputs"]
    rows = []
    for method in VARIATION_METHODS:
        cell = s["variations"].get(method)
        if cell is not None:
            rows.append([METHOD_NAMES[method], *(_fmt(cell[k]) for k in KEPT), _fmt(cell["diversity"]),
                         _fmt(cell["distance_to_input"]), str(cell["background"]["n"])])
    lines += markdown_table(header, rows)
    if "interpolation" in s:
        it = s["interpolation"]
        lines += ["", "## Interpolation", "",
                  "Pairs of inputs (A, B); slerp of their embeddings at t = 0, ½, 1 from one shared noise. The "
                  "endpoints are checked against their own input; the midpoint's background and object colour "
                  "should each be one of the two inputs'.", "",
                  *markdown_table(["", *(KEPT_NAMES[k] for k in KEPT), "outputs"],
                                  [["Endpoints", *(_fmt(it["endpoints"][k]) for k in KEPT),
                                    str(it["endpoints"]["background"]["n"])]]),
                  "", f"Midpoint: background one of the two inputs' {_fmt(it['background_either'])}, object colour "
                      f"one of the two inputs' {_fmt(it['colour_either'])} ({it['background_either']['n']} pairs)."]
    td = s["text_diff"]
    measures = ("moved", "background_kept", "position_kept", "moved_kept")
    rows = [[f"θ = {float(amount):g}" if amount != "target" else METHOD_NAMES["target"],
             *(_fmt(td[amount][m]) for m in measures), str(td[amount]["moved"]["n"])]
            for amount in td]
    lines += ["", "## Text diffs", "",
              "The input's embedding moved towards the difference of the text embeddings of its Full caption and "
              "the caption with the object in another colour, by θ (the paper's z_θ = slerp(z_i, z_d, θ)), decoded "
              "from the input's DDIM inversion; θ = 0 decodes the input's own embedding.", "",
              *markdown_table(["Amount", *(TEXT_DIFF_NAMES[m] for m in measures), "outputs"], rows)]
    if c.get("prompts_truncated"):
        lines += ["", f"Note: {c['prompts_truncated']} of the {2 * c['items']} captions are longer than the text "
                      "encoder's context and were truncated."]
    return "\n".join(lines) + "\n"


def _with_errors(cells):
    """Values and their interval's distances below and above (0 where a cell has no value)."""
    values = [cell["value"] or 0.0 for cell in cells]
    low = [(cell["value"] - cell["ci95"][0]) if cell["value"] is not None else 0.0 for cell in cells]
    high = [(cell["ci95"][1] - cell["value"]) if cell["value"] is not None else 0.0 for cell in cells]
    return values, low, high


def chart(result: Dict[str, Any], path, name: str = "model") -> Path:
    """OUT/unclip.png: left, each KEPT check per variation method; right, the text diff's measures
    against θ; all with their 95 % intervals."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    s = result["summary"]
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    methods = [m for m in VARIATION_METHODS if m in s["variations"]]
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        cells = [s["variations"][method][k] for k in KEPT]
        values, low, high = _with_errors(cells)
        ax.bar([i + (j - (len(methods) - 1) / 2) * width for i in range(len(KEPT))], values, width,
               yerr=[low, high], capsize=2, label=METHOD_NAMES[method])
    ax.set_xticks(range(len(KEPT)), [k if k != "all" else "col+bg+pos" for k in KEPT])
    ax.set_ylim(0, 1.05)
    ax.set_title("Variations: what they keep of the input")
    ax.legend(fontsize="small")
    ax = fig.add_subplot(1, 2, 2)
    td = {k: v for k, v in s["text_diff"].items() if k != "target"}
    amounts = [float(a) for a in td]
    for measure, label in TEXT_DIFF_NAMES.items():
        cells = [td[a][measure] for a in td]
        values = [cell["value"] or 0.0 for cell in cells]
        ax.plot(amounts, values, marker="o", label=label)
        ax.fill_between(amounts, [cell["ci95"][0] for cell in cells], [cell["ci95"][1] for cell in cells], alpha=0.15)
    ax.set_xlabel("θ")
    ax.set_ylim(0, 1.05)
    ax.set_title("Text diffs: object colour towards the target")
    ax.legend(fontsize="small")
    fig.suptitle(f"unCLIP — {name} (95 % intervals)")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def example_grid(result: Dict[str, Any], tile: int = 80):
    """A PIL image: per example input a labelled row — the input, its variations, its embedding from
    fresh noise, its text diffs (one per θ) and, for the first input of a pair, the interpolation."""
    label_h, pad = 14, 4
    rows = []
    for ex in result["examples"]:
        item = ex["item"]
        tiles = [("input", item.source.image)]
        tiles += [(f"variation {k + 1}", x) for k, x in enumerate(ex["variation"])]
        tiles += [(f"fresh noise {k + 1}", x) for k, x in enumerate(ex["embedding_only"])]
        tiles += [(f"diff θ={a:g}", x) for a, x in zip(ex["amounts"], ex["text_diff"])]
        if ex["interpolation"] is not None:
            tiles += [(f"interp t={t:g}", x) for t, x in zip((0, 0.5, 1), ex["interpolation"])]
        caption = f"#{item.index} {item.source.prompt} -> {item.target_colour}"
        rows.append((caption, tiles))
    columns = max((len(t) for _, t in rows), default=1)
    width = pad + columns * (tile + pad)
    height = pad + sum(2 * label_h + tile + pad for _ in rows)
    sheet = Image.new("RGB", (max(width, 320), max(height, 20)), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for caption, tiles in rows:
        draw.text((pad, y), caption[:160], fill="black")
        y += label_h
        pictures = to_pil(torch.stack([x.float().clamp(-1, 1) for _, x in tiles]))
        for k, ((label, _), picture) in enumerate(zip(tiles, pictures)):
            draw.text((pad + k * (tile + pad), y), label, fill="black")
            sheet.paste(picture.resize((tile, tile), Image.NEAREST), (pad + k * (tile + pad), y + label_h))
        y += label_h + tile + pad
    return sheet


def write_unclip_report(result: Dict[str, Any], out, name: str = "model", *, plots: bool = True) -> List[Path]:
    """OUT/unclip.json, OUT/unclip.md, with ``plots`` OUT/unclip.png (needs matplotlib) and, with
    examples, OUT/unclip_examples.png; returns the paths."""
    return write_report_files(result, out, "unclip", name, what="unCLIP", markdown=markdown_report, chart=chart,
                              example_grid=example_grid, plots=plots)
