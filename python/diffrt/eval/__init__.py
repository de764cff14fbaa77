"""Benchmarks on the procedural world: an EditBench-style inpainting benchmark (the names here),
text-to-image prompt following (`diffrt.eval.t2i`), DiffEdit against SDEdit
(`diffrt.eval.diffedit`), unCLIP's variations, interpolations and text diffs (`diffrt.eval.unclip`)
and Imagic's edit / preservation trade-off per η (`diffrt.eval.imagic`). The commands are
``diffrt eval editbench``, ``diffrt eval t2i``, ``diffrt eval diffedit``, ``diffrt eval unclip``
and ``diffrt eval imagic``.

EditBench (Imagen Editor, Wang et al. 2023, §4) pairs each image with a mask and three prompts —
Mask-Simple, Mask-Rich and Full — and breaks results down by mask size, attribute, object and
scene. Here the world supplies every item's ground truth: the source scene, the edited scene (one
attribute of one object changed), exact object masks and the background the edited object sits on.
So next to CLIPScore and CLIP-R-Precision (with the bundle's CLIP) the evaluation checks each
attribute directly on the model's output (`predict_attributes`: the painted silhouette against
re-renderings of every possible answer), measures background preservation outside the mask, and
scores DiffEdit's automatic mask against the true edit region.

    design.py       the benchmark's factors and its item (`EditBenchItem`, `design_cell`)
    items.py        drawing items from the world (`editbench`, `edit_item`)
    attributes.py   checking attributes on an image (`predict_attributes`, `dominant_colour`)
    metrics.py      CLIPScore, CLIP-R-Precision, background PSNR, mask IoU, `summarize`
    runner.py       running models (`run_editbench`, `compare_editbench`)
    report.py       JSON, markdown, charts, example grid, comparison tables
    t2i.py          text-to-image prompt following (one and two objects): items, checks, `run_t2i`
    t2i_report.py   its report
    diffedit.py     DiffEdit against SDEdit: items, scores, `run_diffedit`
    diffedit_report.py  its report
    unclip.py       unCLIP: what variations, interpolations and text diffs keep; `run_unclip`
    unclip_report.py    its report
    imagic.py       Imagic's trade-off per η: items, scores, `run_imagic`
    imagic_report.py    its report
    intervals.py    95 % intervals: Wilson, bootstrap, paired bootstrap
"""

from ._shared import threshold_label
from .attributes import (SILHOUETTE_THRESHOLD, attribute_checks, colour_accuracy, dominant_colour,
                         expected_attributes, predict_attributes, silhouette, texture_features)
from .design import (ATTRIBUTES, BREAKDOWNS, DEFAULT_ITEMS, DEFAULT_SEED, MASK_SIZES, OBJECT_CATEGORIES, PROMPT_NAMES,
                     PROMPT_TYPES, SCENES, EditBenchItem, design_cell, mask_size_class)
from .items import edit_item, editbench, mask_simple
from .metrics import (METRICS, EditBenchResult, background_psnr, by_mask_size, clip_r_precision,
                      clip_r_precision_hits, clip_score, mask_iou, summarize)
from .runner import compare_editbench, run_editbench

__all__ = ["ATTRIBUTES", "BREAKDOWNS", "DEFAULT_ITEMS", "DEFAULT_SEED", "EditBenchItem", "EditBenchResult",
           "MASK_SIZES", "METRICS", "OBJECT_CATEGORIES", "PROMPT_NAMES", "PROMPT_TYPES", "SCENES",
           "SILHOUETTE_THRESHOLD", "attribute_checks", "background_psnr", "by_mask_size", "clip_r_precision",
           "clip_r_precision_hits", "clip_score", "colour_accuracy", "compare_editbench", "design_cell",
           "dominant_colour", "edit_item", "editbench", "expected_attributes", "mask_iou", "mask_simple",
           "mask_size_class", "predict_attributes", "run_editbench", "silhouette", "summarize", "texture_features",
           "threshold_label"]
