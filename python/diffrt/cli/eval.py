"""``diffrt eval editbench``, ``diffrt eval t2i``, ``diffrt eval diffedit``, ``diffrt eval unclip`` and
``diffrt eval imagic``: the benchmarks of `diffrt.eval` on a model folder, written as reports (see
`diffrt.eval.report`, `diffrt.eval.t2i_report`, `diffrt.eval.diffedit_report`,
`diffrt.eval.unclip_report` and `diffrt.eval.imagic_report`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import List, Sequence

from ..data.world import check_resolution
from ..eval import (DEFAULT_ITEMS, DEFAULT_SEED, compare_editbench, diffedit, diffedit_report, editbench, report,
                    run_editbench, t2i, t2i_report, unclip, unclip_report)
from ..eval import imagic, imagic_report
from .errors import CommandError
from .files import load_bundle
from .options import (MODEL_HELP, add_mask_options, add_threshold_option, eta_arg, finite_arg, guidance_arg,
                      int_at_least, seed_arg,
                      strength_arg)


def _require_parts(bundle, args, parts: Sequence[str], purpose: str) -> None:
    for part in parts:
        if not bundle.has(part):
            hint = "" if args.model else " (the default weights folder; pass --model DIR)"
            raise CommandError(f"{bundle.directory}{hint} has no '{part}' model, which {purpose} needs")


def _require_matplotlib(args) -> None:
    if not args.no_plots and not report.have_matplotlib():
        raise CommandError("the plots need matplotlib: pip install 'diffrt[eval]' (or pass --no-plots)")


def _add_report_options(parser, out: str, command) -> None:
    """--out, --no-plots and --quiet, the same for every evaluation; ``command`` runs it."""
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    parser.add_argument("--no-plots", action="store_true", help="skip the matplotlib charts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=command)


def editbench_command(args) -> List[Path]:
    if args.items < 1 or args.steps < 1:
        raise CommandError("--items and --steps must be >= 1")
    _require_matplotlib(args)
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
                   use_sr=args.sr, diffedit_n=args.diffedit_n, diffedit_strength=args.mask_strength,
                   diffedit_normalise=args.mask_normalise, diffedit_smooth=args.mask_smooth,
                   diffedit_threshold=args.mask_threshold, batch_size=args.batch_size, progress=not args.quiet)
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
    if args.pairs is not None and args.pairs < 0:
        raise CommandError(f"--pairs must be >= 0, got {args.pairs}")
    if args.seed < 0 or args.bench_seed < 0:
        raise CommandError("--seed and --bench-seed must be >= 0")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise CommandError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    _require_matplotlib(args)
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "base"), "the t2i evaluation")
    result = t2i.run_t2i(bundle, items=args.items, pairs=args.pairs, steps=args.steps, guidance=args.guidance,
                         dynamic_threshold=args.dynamic_threshold, seed=args.seed,
                         batch_size=args.batch_size, bench_seed=args.bench_seed, progress=not args.quiet)
    name = Path(args.model).resolve().name if args.model else "default"
    return t2i_report.write_t2i_report(result, args.out, name, plots=not args.no_plots)


def diffedit_command(args) -> List[Path]:
    _require_matplotlib(args)
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "base"), "the DiffEdit evaluation")
    result = diffedit.run_diffedit(bundle, items=args.items, steps=args.steps, strength=args.strength,
                                   guidance=args.guidance, mask_n=args.mask_n, mask_strength=args.mask_strength,
                                   mask_threshold=args.mask_threshold, mask_normalise=args.mask_normalise,
                                   mask_smooth=args.mask_smooth, seed=args.seed,
                                   batch_size=args.batch_size, bench_seed=args.bench_seed,
                                   true_mask=not args.no_true_mask, progress=not args.quiet)
    name = Path(args.model).resolve().name if args.model else "default"
    return diffedit_report.write_diffedit_report(result, args.out, name, plots=not args.no_plots)


def _amounts_arg(text: str):
    try:
        return unclip.check_amounts([float(v) for v in text.split(",")])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"comma-separated numbers in [0, 1] expected ({e})") from None


def unclip_command(args) -> List[Path]:
    _require_matplotlib(args)
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "decoder"), "the unCLIP evaluation")
    result = unclip.run_unclip(bundle, items=args.items, variations=args.variations, steps=args.steps,
                               guidance=args.guidance, inversion_guidance=args.inversion_guidance, eta=args.eta,
                               amounts=args.amounts, seed=args.seed,
                               batch_size=args.batch_size, bench_seed=args.bench_seed, progress=not args.quiet)
    name = Path(args.model).resolve().name if args.model else "default"
    return unclip_report.write_unclip_report(result, args.out, name, plots=not args.no_plots)


def imagic_command(args) -> List[Path]:
    if len(set(args.etas)) != len(args.etas):
        raise CommandError(f"--etas must be distinct, got {' '.join(f'{e:g}' for e in args.etas)}")
    _require_matplotlib(args)
    bundle = load_bundle(args.model)
    _require_parts(bundle, args, ("clip", "base"), "the Imagic evaluation")
    result = imagic.run_imagic(bundle, items=args.items, etas=args.etas, embedding_steps=args.embedding_steps,
                               finetune_steps=args.finetune_steps, embedding_lr=args.embedding_lr,
                               finetune_lr=args.finetune_lr, steps=args.steps, guidance=args.guidance, seed=args.seed,
                               bench_seed=args.bench_seed, progress=not args.quiet)
    name = Path(args.model).resolve().name if args.model else "default"
    return imagic_report.write_imagic_report(result, args.out, name, plots=not args.no_plots)


def _positive_arg(text: str) -> float:
    """--embedding-lr, --finetune-lr: a finite number > 0."""
    value = finite_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return value


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="benchmarks: diffrt eval editbench | t2i | diffedit | unclip | imagic")
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
    add_mask_options(e)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--compare", action="append", metavar="NAME=DIR",
                   help="also evaluate this base model (a bundle or a UNet folder, with the main bundle's CLIP) "
                        "and write OUT/editbench_compare.md; repeatable")
    _add_report_options(e, "editbench", editbench_command)
    t = benches.add_parser("t2i", help="text-to-image prompt following: background, colour, position and shape",
                           description="Sample single-object and two-object prompts of the procedural world with "
                                       "the base model as text-to-image, check background colour, object colour, "
                                       "position and shape (two objects: each colour and shape, and their relative "
                                       "position) against the ground truth, and write OUT/t2i.json, OUT/t2i.md "
                                       "(accuracies with 95 % intervals), sample grids and OUT/t2i_accuracy.png.")
    t.add_argument("--model", help=MODEL_HELP)
    t.add_argument("--items", type=int, default=t2i.DEFAULT_ITEMS,
                   help=f"single-object prompts (default {t2i.DEFAULT_ITEMS})")
    t.add_argument("--pairs", type=int, help="two-object prompts (default: as many as --items; 0 skips them)")
    t.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    t.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance weight (default 5)")
    add_threshold_option(t)
    t.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    t.add_argument("--bench-seed", type=int, default=t2i.DEFAULT_BENCH_SEED,
                   help=f"seed of the benchmark's prompts (default {t2i.DEFAULT_BENCH_SEED})")
    t.add_argument("--batch-size", type=int, default=25, help="images per batch (default 25)")
    _add_report_options(t, "eval-t2i", t2i_command)
    d = benches.add_parser("diffedit", help="DiffEdit against SDEdit: mask IoU, edit success, background PSNR",
                           description="Edit scenes of the procedural world from their Full caption to the caption "
                                       "with one object's colour or shape changed, with DiffEdit (automatic mask), "
                                       "SDEdit at the same strength and DiffEdit given the true mask; score mask "
                                       "IoU, edit success and background PSNR against the re-rendered target, and "
                                       "write OUT/diffedit.json, OUT/diffedit.md (with 95 % intervals), "
                                       "OUT/diffedit.png and OUT/diffedit_examples.png.")
    d.add_argument("--model", help=MODEL_HELP)
    d.add_argument("--items", type=int_at_least(1), default=diffedit.DEFAULT_ITEMS,
                   help=f"edits (default {diffedit.DEFAULT_ITEMS}; even items colour, odd items shape)")
    d.add_argument("--steps", type=int_at_least(1), default=25, help="DDIM steps of the whole schedule (default 25)")
    d.add_argument("--strength", type=strength_arg, default=0.5,
                   help="encoding ratio r: the last ceil(r·steps) steps run, for DiffEdit and SDEdit (default 0.5)")
    d.add_argument("--guidance", type=guidance_arg, default=3.0,
                   help="decoding classifier-free guidance weight (default 3, as diffrt diffedit)")
    d.add_argument("--mask-n", type=int_at_least(1), default=10, help="noise draws of DiffEdit's mask (default 10)")
    add_mask_options(d)
    d.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (default 0)")
    d.add_argument("--bench-seed", type=seed_arg, default=diffedit.DEFAULT_BENCH_SEED,
                   help=f"seed of the benchmark's items (default {diffedit.DEFAULT_BENCH_SEED})")
    d.add_argument("--batch-size", type=int_at_least(1), default=16, help="items per batch (default 16)")
    d.add_argument("--no-true-mask", action="store_true", help="skip DiffEdit with the true mask")
    _add_report_options(d, "eval-diffedit", diffedit_command)
    u = benches.add_parser("unclip", help="unCLIP: what variations, interpolations and text diffs keep of the input",
                           description="Vary, interpolate and text-diff the single-object scenes of the t2i "
                                       "benchmark with the decoder and CLIP; check each output's background, object "
                                       "colour, position and shape against the input's labels (text diffs: the "
                                       "object colour against the target's), and write OUT/unclip.json, "
                                       "OUT/unclip.md (with 95 % intervals), OUT/unclip.png and "
                                       "OUT/unclip_examples.png.")
    u.add_argument("--model", help=MODEL_HELP)
    u.add_argument("--items", type=int_at_least(1), default=unclip.DEFAULT_ITEMS,
                   help=f"input images (default {unclip.DEFAULT_ITEMS})")
    u.add_argument("--variations", type=int_at_least(1), default=2,
                   help="variations per input and method (default 2; 2 or more measure diversity)")
    u.add_argument("--steps", type=int_at_least(1), default=25, help="DDIM steps of the decoder (default 25)")
    u.add_argument("--guidance", type=guidance_arg, default=3.0,
                   help="decoder guidance weight of interpolations and the embedding-only row (default 3)")
    u.add_argument("--inversion-guidance", type=guidance_arg, default=1.0,
                   help="decoder guidance weight of the variations and text diffs, which decode the input's DDIM "
                        "inversion (default 1: the inversion's own model)")
    u.add_argument("--eta", type=eta_arg, default=0.1,
                   help="the variations' DDIM η (default 0.1; the paper's 1 discards the inverted noise on a "
                        "zero-terminal-SNR schedule)")
    u.add_argument("--amounts", type=_amounts_arg, default=list(unclip.DEFAULT_AMOUNTS),
                   help="text-diff amounts θ, comma-separated (default " +
                        ",".join(f"{a:g}" for a in unclip.DEFAULT_AMOUNTS) + ")")
    u.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (default 0)")
    u.add_argument("--bench-seed", type=seed_arg, default=t2i.DEFAULT_BENCH_SEED,
                   help=f"seed of the benchmark's scenes (default {t2i.DEFAULT_BENCH_SEED}, the t2i benchmark's)")
    u.add_argument("--batch-size", type=int_at_least(2), default=12, help="inputs per batch, made even (default 12)")
    _add_report_options(u, "eval-unclip", unclip_command)
    m = benches.add_parser("imagic", help="Imagic's edit / preservation trade-off per η",
                           description="Edit scenes of the procedural world with Imagic towards the caption with "
                                       "the object's colour or shape changed (embedding optimisation, fine-tuning, "
                                       "an η sweep from one noise); check every output's edited attribute, "
                                       "background, position and other attribute against the re-rendered target, "
                                       "measure background PSNR, and write OUT/imagic.json, OUT/imagic.md (the "
                                       "trade-off per η with 95 % intervals and the best η), OUT/imagic.png and "
                                       "OUT/imagic_examples.png.")
    m.add_argument("--model", help=MODEL_HELP)
    m.add_argument("--items", type=int_at_least(1), default=imagic.DEFAULT_ITEMS,
                   help=f"edits (default {imagic.DEFAULT_ITEMS}; even items colour, odd items shape)")
    m.add_argument("--etas", type=finite_arg, nargs="+", default=list(imagic.DEFAULT_ETAS), metavar="ETA",
                   help="interpolation weights η of the target embedding, distinct (default "
                        f"{' '.join(f'{e:g}' for e in imagic.DEFAULT_ETAS)})")
    m.add_argument("--embedding-steps", type=int_at_least(0), default=imagic.DEFAULT_EMBEDDING_STEPS,
                   help=f"stage A: embedding optimisation steps (default {imagic.DEFAULT_EMBEDDING_STEPS})")
    m.add_argument("--embedding-lr", type=_positive_arg, default=imagic.EMBEDDING_LR,
                   help=f"stage A: Adam learning rate (default {imagic.EMBEDDING_LR:g})")
    m.add_argument("--finetune-steps", type=int_at_least(0), default=imagic.DEFAULT_FINETUNE_STEPS,
                   help=f"stage B: fine-tuning steps (default {imagic.DEFAULT_FINETUNE_STEPS})")
    m.add_argument("--finetune-lr", type=_positive_arg, default=imagic.FINETUNE_LR,
                   help=f"stage B: Adam learning rate (default {imagic.FINETUNE_LR:g})")
    m.add_argument("--steps", type=int_at_least(1), default=imagic.DEFAULT_STEPS,
                   help=f"stage C: DDIM steps (default {imagic.DEFAULT_STEPS})")
    m.add_argument("--guidance", type=guidance_arg, default=imagic.DEFAULT_GUIDANCE,
                   help=f"stage C: classifier-free guidance weight (default {imagic.DEFAULT_GUIDANCE:g})")
    m.add_argument("--seed", type=seed_arg, default=0, help="seed of the fit's and the sampling's noise (default 0)")
    m.add_argument("--bench-seed", type=seed_arg, default=imagic.DEFAULT_BENCH_SEED,
                   help=f"seed of the benchmark's items (default {imagic.DEFAULT_BENCH_SEED})")
    _add_report_options(m, "eval-imagic", imagic_command)
