"""The ``diffrt`` commands for people: demo, generate, inpaint, diffedit, imagic, variations, interpolate.
Each reads PNG/JPEG files, runs a pipeline on a model bundle (``--model DIR``) and writes PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

import torch

from .images import from_pil, to_pil

DEFAULT_OUT = "diffrt-out"


class CommandError(ValueError):
    """A problem with the user's input, reported as one line."""


def read_image(path: str, *, mode: str = "RGB"):
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{file}: no such file")
    try:
        with Image.open(file) as im:
            return im.convert(mode)
    except (UnidentifiedImageError, OSError) as e:
        raise CommandError(f"{file}: not a readable image ({e})") from e


def _prompt(name: str, text: str) -> str:
    if not text or not text.strip():
        raise CommandError(f"--{name} must not be empty")
    return text


def _write(images: torch.Tensor, out: Path, stem: str) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(to_pil(images)):
        path = out / f"{stem}_{i:03d}.png"
        im.save(path)
        paths.append(path)
    return paths


def _bundle(args):
    from .bundle import load

    try:
        return load(args.model)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from e


def _generator(args):
    return torch.Generator().manual_seed(args.seed)


def _cascade(bundle, args):
    from .pipelines import ImagenEditorPipeline

    sr = bundle.unet("sr") if bundle.has("sr") else None
    return ImagenEditorPipeline(bundle.unet("base"), bundle.noise_schedule("base"), bundle.text_encoder,
                                super_resolution=sr, sr_noise_schedule=bundle.noise_schedule("sr") if sr else None,
                                num_steps=args.steps, sr_num_steps=max(1, args.steps // 2))


def generate(args) -> List[Path]:
    pipe = _cascade(_bundle(args), args)
    out = pipe(_prompt("prompt", args.prompt), num_images_per_prompt=args.num_images, guidance=args.guidance,
               dynamic_threshold=args.dynamic_threshold, composite=False, generator=_generator(args), output_type="pt",
               progress=not args.quiet)
    return _write(out.images, Path(args.out), "generate")


def inpaint(args) -> List[Path]:
    bundle = _bundle(args)
    pipe = _cascade(bundle, args)
    image, mask = read_image(args.image), read_image(args.mask, mode="L")
    last = bundle.unet("sr") if bundle.has("sr") else bundle.unet("base")
    side = last.config.cond_image_size or last.config.image_size
    if image.size != (side, side):
        print(f"diffrt inpaint: resizing {args.image} from {image.size[0]}×{image.size[1]} to {side}×{side}")
    if mask.size != image.size:
        print(f"diffrt inpaint: resizing the mask from {mask.size[0]}×{mask.size[1]} to the image's size")
    out = pipe(_prompt("prompt", args.prompt), from_pil(image, size=side), mask, guidance=args.guidance,
               dynamic_threshold=args.dynamic_threshold, num_images_per_prompt=args.num_images,
               generator=_generator(args), output_type="pt",
               progress=not args.quiet)
    return _write(out.images, Path(args.out), "inpaint")


def _text_to_image_model(bundle):
    """The base UNet as a text-to-image model (whole image masked) for DiffEdit and Imagic."""
    return bundle.unet("base"), lambda prompts: bundle.text_to_image_condition("base", list(prompts))


def diffedit(args) -> List[Path]:
    from .pipelines import DiffEditPipeline

    bundle = _bundle(args)
    model, encode = _text_to_image_model(bundle)
    pipe = DiffEditPipeline(model, bundle.noise_schedule("base"), encode, num_steps=args.steps)
    image = from_pil(read_image(args.image), size=model.config.image_size)
    out = pipe(image, _prompt("source", args.source), _prompt("target", args.target), strength=args.strength,
               guidance_scale=args.guidance, generator=_generator(args), output_type="pt", progress=not args.quiet)
    overlay = image.clone()
    overlay[:, 0:1] = torch.where(out.mask.bool(), torch.ones_like(overlay[:, :1]), overlay[:, :1])  # mask in red
    return _write(out.images, Path(args.out), "diffedit") + _write(overlay, Path(args.out), "diffedit_mask")


def imagic(args) -> List[Path]:
    from .pipelines import ImagicPipeline

    bundle = _bundle(args)
    model, encode = _text_to_image_model(bundle)
    pipe = ImagicPipeline(model, bundle.noise_schedule("base"), encode, num_steps=args.steps)
    image = from_pil(read_image(args.image), size=model.config.image_size)
    pipe.fit(image, _prompt("target", args.target), embedding_steps=args.embedding_steps,
             finetune_steps=args.finetune_steps, generator=_generator(args), progress=not args.quiet)
    out = pipe(args.eta, guidance_scale=args.guidance, generator=_generator(args), output_type="pt",
               progress=not args.quiet)
    return _write(out.images, Path(args.out), "imagic")


def _unclip(bundle, args):
    from .pipelines import UnCLIPPipeline

    return UnCLIPPipeline(bundle.prior, bundle.unet("decoder"), bundle.text_encoder, bundle.clip.encode_image,
                          noise_schedule=bundle.noise_schedule("decoder"),
                          prior_noise_schedule=bundle.noise_schedule("prior"), num_steps=args.steps,
                          prior_steps=max(1, args.steps // 2))


def _clip_image(bundle, path):
    return from_pil(read_image(path), size=bundle.clip.config.image_size)


def variations(args) -> List[Path]:
    bundle = _bundle(args)
    pipe = _unclip(bundle, args)
    image = _clip_image(bundle, args.image)
    out = pipe.variations(image, num_variations=args.num_images, guidance=args.guidance, generator=_generator(args),
                          output_type="pt", progress=not args.quiet)
    return _write(out.images, Path(args.out), "variations")


def interpolate(args) -> List[Path]:
    bundle = _bundle(args)
    pipe = _unclip(bundle, args)
    za = bundle.clip.encode_image(_clip_image(bundle, args.image_a))
    zb = bundle.clip.encode_image(_clip_image(bundle, args.image_b))
    ts = [i / (args.frames - 1) for i in range(args.frames)] if args.frames > 1 else [0.0]
    out = pipe.interpolate(za, zb, ts, guidance=args.guidance, generator=_generator(args), output_type="pt",
                           progress=not args.quiet)
    return _write(out.images, Path(args.out), "interpolate")


def dynamic_threshold_arg(text: str) -> float:
    """--dynamic-threshold: a percentile in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def add_threshold_option(p) -> None:
    p.add_argument("--dynamic-threshold", type=dynamic_threshold_arg, default=None, metavar="P",
                   help="Imagen's dynamic thresholding of the predicted x0 at percentile P (e.g. 0.995), for "
                        "guidance of 10 and more; default off: at moderate guidance it desaturates the samples")


def add_commands(sub) -> None:
    def common(p, steps=50, guidance=3.0, out=DEFAULT_OUT):
        p.add_argument("--model", help="model folder (clip/, base/, sr/, prior/, decoder/); default: the shipped weights")
        p.add_argument("--out", default=out, help=f"output folder for the PNGs (default: {out})")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=steps, help="DDIM steps")
        p.add_argument("--guidance", type=float, default=guidance, help="classifier-free guidance weight")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("generate", help="text-to-image with the cascade")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num-images", type=int, default=4)
    common(p)
    add_threshold_option(p)
    p.set_defaults(run=generate)
    p = sub.add_parser("inpaint", help="repaint the white part of a mask to match a prompt (Imagen Editor)")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="white = repaint; resized to the image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num-images", type=int, default=1)
    common(p)
    add_threshold_option(p)
    p.set_defaults(run=inpaint)
    p = sub.add_parser("diffedit", help="edit an image from a source to a target caption, mask found automatically")
    p.add_argument("--image", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--strength", type=float, default=0.5, help="encoding ratio r")
    common(p)
    p.set_defaults(run=diffedit)
    p = sub.add_parser("imagic", help="edit an image towards a target text (optimise, fine-tune, interpolate)")
    p.add_argument("--image", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--eta", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    p.add_argument("--embedding-steps", type=int, default=100)
    p.add_argument("--finetune-steps", type=int, default=200)
    common(p, guidance=3.0)
    p.set_defaults(run=imagic)
    p = sub.add_parser("variations", help="unCLIP variations of an image")
    p.add_argument("--image", required=True)
    p.add_argument("--num-images", type=int, default=4)
    common(p, guidance=3.0)
    p.set_defaults(run=variations)
    p = sub.add_parser("interpolate", help="unCLIP interpolation between two images")
    p.add_argument("--image-a", required=True)
    p.add_argument("--image-b", required=True)
    p.add_argument("--frames", type=int, default=5)
    common(p, guidance=3.0)
    p.set_defaults(run=interpolate)
    p = sub.add_parser("demo", help="every pipeline on the default (or given) models; PNGs and a contact sheet")
    p.add_argument("--embedding-steps", type=int, default=50)
    p.add_argument("--finetune-steps", type=int, default=100)
    common(p, steps=25, out="diffrt-demo")
    add_threshold_option(p)
    p.set_defaults(run=demo)


__all__ = ["CommandError", "add_commands", "read_image"]


def demo(args) -> List[Path]:
    """All four pipelines on one model folder: cascade generation and inpainting, DiffEdit with its
    mask drawn over the input, an Imagic η sweep, unCLIP generation / variations / interpolation /
    a text diff; single images plus a labelled contact sheet."""
    from PIL import Image, ImageDraw

    from .data import ProceduralDataset
    from .pipelines import DiffEditPipeline, ImagicPipeline

    bundle = _bundle(args)
    out = Path(args.out)
    quiet = args.quiet
    base = bundle.unet("base")
    last = bundle.unet("sr") if bundle.has("sr") else base
    side = last.config.cond_image_size or last.config.image_size
    sample = ProceduralDataset(max(32, side), length=1, seed=args.seed)[0]
    scene = torch.nn.functional.interpolate(sample["image"][None], size=(side, side), mode="area")
    mask = (torch.nn.functional.interpolate(sample["mask"][None], size=(side, side), mode="area") > 0).float()
    rows = []  # (label, images)

    def stage(label, images):
        rows.append((label, images.float().clamp(-1, 1)))
        return _write(images, out, label.split(":")[0].replace(" ", "_"))

    written: List[Path] = []
    cascade = _cascade(bundle, args)
    prompt = "a large red solid circle in the middle on a plain blue background"  # the world's Full-caption wording
    g = _generator(args)
    threshold = args.dynamic_threshold
    written += stage("generate: " + prompt, cascade(prompt, num_images_per_prompt=3, composite=False, generator=g,
                                                    guidance=args.guidance, dynamic_threshold=threshold,
                                                    output_type="pt", progress=not quiet).images)
    written += stage("inpaint: a yellow star", cascade("a yellow star", scene, mask, generator=g, guidance=args.guidance,
                                                       dynamic_threshold=threshold,
                                                       output_type="pt", progress=not quiet).images)
    model, encode = _text_to_image_model(bundle)
    small = torch.nn.functional.interpolate(scene, size=(base.config.image_size,) * 2, mode="area")
    edit = DiffEditPipeline(model, bundle.noise_schedule("base"), encode, num_steps=args.steps)
    source = sample["captions"]["simple"]
    edited = edit(small, source, "a blue square", generator=g, output_type="pt", progress=not quiet)
    overlay = small.clone()
    overlay[:, :1] = torch.where(edited.mask.bool(), torch.ones_like(overlay[:, :1]), overlay[:, :1])
    written += stage(f"diffedit: {source} -> a blue square (input, mask, edit)",
                     torch.cat([small, overlay, edited.images]))
    imagic = ImagicPipeline(model, bundle.noise_schedule("base"), encode, num_steps=args.steps)
    imagic.fit(small, "a green " + source.split()[-1], embedding_steps=args.embedding_steps,
               finetune_steps=args.finetune_steps, generator=_generator(args), progress=not quiet)
    written += stage("imagic: eta 0, 0.5, 1", imagic([0.0, 0.5, 1.0], generator=g, output_type="pt",
                                                      progress=not quiet).images)
    if bundle.has("prior") and bundle.has("decoder"):
        unclip = _unclip(bundle, args)
        generated = unclip(prompt, num_images_per_prompt=2, generator=g, output_type="pt", progress=not quiet)
        written += stage("unclip: " + prompt, generated.images)
        clip_in = torch.nn.functional.interpolate(scene, size=(bundle.clip.config.image_size,) * 2, mode="area")
        written += stage("variations", unclip.variations(clip_in, num_variations=3, generator=g, output_type="pt",
                                                         progress=not quiet).images)
        za, zb = generated.image_embeds[:1], bundle.clip.encode_image(clip_in)
        written += stage("interpolate", unclip.interpolate(za, zb, (0.0, 0.5, 1.0), generator=g, output_type="pt",
                                                           progress=not quiet).images)
        written += stage(f"text diff: {source} -> a blue square",
                         unclip.text_diff(clip_in, source, "a blue square", (0.0, 0.3, 0.6), generator=g,
                                          output_type="pt", progress=not quiet).images)
    # contact sheet: one labelled row per stage, images scaled to a common height
    height = 96
    from .images import to_pil

    sheet_rows = []
    for label, images in rows:
        tiles = [im.resize((height, height), Image.NEAREST) for im in to_pil(images)]
        row = Image.new("RGB", (max(640, len(tiles) * (height + 4) + 4), height + 22), "white")
        ImageDraw.Draw(row).text((4, 4), label, fill="black")
        for i, tile in enumerate(tiles):
            row.paste(tile, (4 + i * (height + 4), 20))
        sheet_rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in sheet_rows), sum(r.height for r in sheet_rows)), "white")
    y = 0
    for row in sheet_rows:
        sheet.paste(row, (0, y))
        y += row.height
    sheet_path = out / "contact_sheet.png"
    sheet.save(sheet_path)
    return written + [sheet_path]
