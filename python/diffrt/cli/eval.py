"""``diffrt eval editbench`` and ``diffrt eval t2i``: the benchmarks of `diffrt.eval` on a model
folder, written as reports (see `diffrt.eval.report` and `diffrt.eval.t2i_report`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

from ..data.world import check_resolution
from ..eval import DEFAULT_ITEMS, DEFAULT_SEED, compare_editbench, editbench, report, run_editbench, t2i, t2i_report
from .errors import CommandError
from .files import load_bundle
from .options import MODEL_HELP, add_threshold_option


def _require_parts(bundle, args, parts: Sequence[str], purpose: str) -> None:
    for part in parts:
        if not bundle.has(part):
            hint = "" if args.model else " (the default weights folder; pass --model DIR)"
            raise CommandError(f"{bundle.directory}{hint} has no '{part}' model, which {purpose} needs")


def editbench_command(args) -> List[Path]:
    if args.items < 1 or args.steps < 1:
        raise CommandError("--items and --steps must be >= 1")
    if args.no_plots is False and not report.have_matplotlib():
        raise CommandError("the plots need matplotlib: pip install 'diffrt[eval]' (or pass --no-plots)")
    compare = []
    for entry in args.compare or []:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise CommandError(f"--compare takes NAME=DIR, got {entry!r}")
        compare.append((name, folder))
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "base") + (("sr",) if args.sr else ()), "EditBench")
    name = args.model_name or (Path(args.model).resolve().name if args.model else "default")
    if any(n == name for n, _ in compare):
        raise CommandError(f"--compare name {name!r} is the evaluated model's name; pick another")
    options = dict(steps=args.steps, guidance=args.guidance, dynamic_threshold=args.dynamic_threshold, seed=args.seed,
                   bench_seed=args.bench_seed,
                   use_sr=args.sr, diffedit_n=args.diffedit_n, batch_size=args.batch_size, progress=not args.quiet)
    last = bundle.unet("sr") if args.sr else bundle.unet("base")
    resolution = check_resolution(args.resolution if args.resolution is not None else last.config.image_size)
    items = editbench(args.items, resolution=resolution, seed=args.bench_seed)
    out = Path(args.out)
    result = run_editbench(bundle, name=name, items=items, resolution=resolution, **options)
    written = report.write_report(result, out, plots=not args.no_plots)
    if compare:
        others = compare_editbench(compare, bundle, items=items, resolution=resolution, **options)
        results = {name: result, **others}
        for other_name, other in others.items():
            written += report.write_report(other, out / "compare" / other_name, plots=not args.no_plots)
        written += report.write_comparison(results, out)
    return written


def t2i_command(args) -> List[Path]:
    for flag, value in (("--items", args.items), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value < 1:
            raise CommandError(f"{flag} must be >= 1, got {value}")
    if args.seed < 0 or args.bench_seed < 0:
        raise CommandError("--seed and --bench-seed must be >= 0")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise CommandError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "base"), "the t2i evaluation")
    result = t2i.run_t2i(bundle, items=args.items, steps=args.steps, guidance=args.guidance,
                         dynamic_threshold=args.dynamic_threshold, seed=args.seed,
                         batch_size=args.batch_size, bench_seed=args.bench_seed, progress=not args.quiet)
    name = Path(args.model).resolve().name if args.model else "default"
    return t2i_report.write_t2i_report(result, args.out, name)


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="benchmarks: diffrt eval editbench | t2i")
    benches = p.add_subparsers(dest="benchmark", required=True)
    e = benches.add_parser("editbench", help="EditBench-style inpainting evaluation on the procedural world",
                           description="Inpaint every EditBench item with its Mask-Simple, Mask-Rich and Full "
                                       "prompts and write OUT/editbench.json, OUT/editbench.md, plots and an "
                                       "example grid.")
    e.add_argument("--model", help=MODEL_HELP)
    e.add_argument("--model-name", help="name in the report (default: the model folder's name)")
    e.add_argument("--items", type=int, default=DEFAULT_ITEMS, help=f"benchmark items (default {DEFAULT_ITEMS})")
    e.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    e.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance weight (default 5)")
    add_threshold_option(e)
    e.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    e.add_argument("--bench-seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the benchmark's items (default {DEFAULT_SEED})")
    e.add_argument("--resolution", type=int, help="render items at this side (default: the model's output side)")
    e.add_argument("--sr", action="store_true", help="evaluate base + super-resolution instead of the base alone")
    e.add_argument("--diffedit-n", type=int, default=10, help="DiffEdit mask noise draws (0 skips DiffEdit IoU)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--compare", action="append", metavar="NAME=DIR",
                   help="also evaluate this base model (a bundle or a UNet folder, with the main bundle's CLIP) "
                        "and write OUT/editbench_compare.md; repeatable")
    e.add_argument("--out", default="editbench", help="output folder (default: editbench)")
    e.add_argument("--no-plots", action="store_true", help="skip the matplotlib bar charts")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=editbench_command)
    t = benches.add_parser("t2i", help="text-to-image prompt following: background, colour, position and shape",
                           description="Sample single-object prompts of the procedural world with the base model "
                                       "as text-to-image, check background colour, object colour, position and "
                                       "shape against the ground truth, and write OUT/t2i.json, OUT/t2i.md and "
                                       "OUT/t2i_samples.png.")
    t.add_argument("--model", help=MODEL_HELP)
    t.add_argument("--items", type=int, default=t2i.DEFAULT_ITEMS, help=f"prompts (default {t2i.DEFAULT_ITEMS})")
    t.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    t.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance weight (default 5)")
    add_threshold_option(t)
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--bench-seed", type=int, default=t2i.DEFAULT_BENCH_SEED,
                   help=f"seed of the benchmark's prompts (default {t2i.DEFAULT_BENCH_SEED})")
    t.add_argument("--batch-size", type=int, default=25, help="images per batch (default 25)")
    t.add_argument("--out", default="eval-t2i", help="output folder (default: eval-t2i)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=t2i_command)
