"""The ``diffrt`` commands for people: demo, generate, inpaint, diffedit, imagic, variations, interpolate.
Each reads PNG/JPEG files, runs a pipeline on a model bundle (``--model DIR``) and writes PNGs."""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, List

import torch
from PIL import Image

from .images import from_pil, to_8bit, to_pil

DEFAULT_OUT = "diffrt-out"
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes any unsigned 64-bit seed
EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that shows the picture upright (what ImageOps.exif_transpose does)
_T = getattr(Image, "Transpose", Image)  # the enum from Pillow 9.1, module constants before
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
            7: _T.TRANSVERSE, 8: _T.ROTATE_90}


class CommandError(ValueError):
    """A problem with the user's input, reported as one line."""


def read_image(path: str, *, mode: str = "RGB"):
    """An image file as 8-bit RGB (or L for masks), upright per its EXIF orientation; 16-bit and
    transparent images as :func:`diffrt.images.to_8bit` describes. Images of more than PIL's
    ``Image.MAX_IMAGE_PIXELS`` pixels are refused (a decompression bomb, or far too large to edit)."""
    from PIL import UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{file}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                orientation = im.getexif().get(EXIF_ORIENTATION)
                image = to_8bit(im, mode, name=str(file))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise CommandError(f"{file}: too large to read ({e}); diffrt reads images of at most "
                           f"{Image.MAX_IMAGE_PIXELS} pixels") from e
    except (UnidentifiedImageError, OSError) as e:
        raise CommandError(f"{file}: not a readable image ({e})") from e
    # transposed after the conversion: to_8bit needs the file's own format (mode I from a PNG is 16-bit)
    upright = _UPRIGHT.get(orientation)
    return image.transpose(upright) if upright is not None else image


def _prompt(name: str, text: str) -> str:
    if not text or not text.strip():
        raise CommandError(f"--{name} must not be empty")
    return text


def output_folder(path: str) -> Path:
    """--out, checked before any model loads: a folder that exists or can be made, and is writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise CommandError(f"--out {out}: cannot write there ({e.strerror or e})") from e
    return out


def _write(images: torch.Tensor, out: Path, stem: str) -> List[Path]:
    if not torch.isfinite(images).all():  # to_pil would save NaN as black
        raise CommandError(f"sampling produced non-finite pixel values (NaN or ±inf); nothing written to {out}")
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


def _start(args):
    """(model bundle, output folder) of an image command: --out is checked first, so a bad --out
    fails before any model loads or samples."""
    out = output_folder(args.out)
    return _bundle(args), out


def _steps(args, noise_schedule) -> int:
    if args.steps > noise_schedule.num_train_timesteps:
        raise CommandError(f"--steps must be <= {noise_schedule.num_train_timesteps} (the model's training "
                           f"timesteps), got {args.steps}")
    return args.steps


def _generator(args):
    return torch.Generator().manual_seed(args.seed)


def _cascade(bundle, args):
    from .pipelines import ImagenEditorPipeline

    sr = bundle.unet("sr") if bundle.has("sr") else None
    return ImagenEditorPipeline(bundle.unet("base"), bundle.noise_schedule("base"), bundle.text_encoder,
                                super_resolution=sr, sr_noise_schedule=bundle.noise_schedule("sr") if sr else None,
                                num_steps=_steps(args, bundle.noise_schedule("base")),
                                sr_num_steps=max(1, args.steps // 2))


def generate(args) -> List[Path]:
    prompt = _prompt("prompt", args.prompt)
    bundle, out = _start(args)
    pipe = _cascade(bundle, args)
    result = pipe(prompt, num_images_per_prompt=args.num_images, guidance=args.guidance,
                  dynamic_threshold=args.dynamic_threshold, composite=False, generator=_generator(args),
                  output_type="pt", progress=not args.quiet)
    return _write(result.images, out, "generate")


def inpaint(args) -> List[Path]:
    prompt = _prompt("prompt", args.prompt)
    bundle, out = _start(args)
    image, mask = read_image(args.image), read_image(args.mask, mode="L")
    pipe = _cascade(bundle, args)
    last = bundle.unet("sr") if bundle.has("sr") else bundle.unet("base")
    side = last.config.cond_image_size or last.config.image_size
    if image.size != (side, side):
        print(f"diffrt inpaint: resizing {args.image} from {image.size[0]}×{image.size[1]} to {side}×{side}")
    if mask.size != image.size:
        print(f"diffrt inpaint: resizing the mask from {mask.size[0]}×{mask.size[1]} to the image's size")
    result = pipe(prompt, from_pil(image, size=side), mask, guidance=args.guidance,
                  dynamic_threshold=args.dynamic_threshold, num_images_per_prompt=args.num_images,
                  generator=_generator(args), output_type="pt", progress=not args.quiet)
    return _write(result.images, out, "inpaint")


def _text_to_image_model(bundle):
    """The base UNet as a text-to-image model (whole image masked) for DiffEdit and Imagic."""
    return bundle.unet("base"), lambda prompts: bundle.text_to_image_condition("base", list(prompts))


def diffedit(args) -> List[Path]:
    from .pipelines import DiffEditPipeline

    source, target = _prompt("source", args.source), _prompt("target", args.target)
    bundle, out = _start(args)
    picture = read_image(args.image)
    model, encode = _text_to_image_model(bundle)
    pipe = DiffEditPipeline(model, bundle.noise_schedule("base"), encode,
                            num_steps=_steps(args, bundle.noise_schedule("base")))
    image = from_pil(picture, size=model.config.image_size)
    result = pipe(image, source, target, strength=args.strength, guidance_scale=args.guidance,
                  generator=_generator(args), output_type="pt", progress=not args.quiet)
    overlay = image.clone()
    overlay[:, 0:1] = torch.where(result.mask.bool(), torch.ones_like(overlay[:, :1]), overlay[:, :1])  # mask in red
    return _write(result.images, out, "diffedit") + _write(overlay, out, "diffedit_mask")


def imagic(args) -> List[Path]:
    from .pipelines import ImagicPipeline

    target = _prompt("target", args.target)
    bundle, out = _start(args)
    picture = read_image(args.image)
    model, encode = _text_to_image_model(bundle)
    pipe = ImagicPipeline(model, bundle.noise_schedule("base"), encode,
                          num_steps=_steps(args, bundle.noise_schedule("base")))
    image = from_pil(picture, size=model.config.image_size)
    pipe.fit(image, target, embedding_steps=args.embedding_steps, finetune_steps=args.finetune_steps,
             generator=_generator(args), progress=not args.quiet)
    result = pipe(args.eta, guidance_scale=args.guidance, generator=_generator(args), output_type="pt",
                  progress=not args.quiet)
    return _write(result.images, out, "imagic")


def _unclip(bundle, args):
    from .pipelines import UnCLIPPipeline

    return UnCLIPPipeline(bundle.prior, bundle.unet("decoder"), bundle.text_encoder, bundle.clip.encode_image,
                          noise_schedule=bundle.noise_schedule("decoder"),
                          prior_noise_schedule=bundle.noise_schedule("prior"),
                          num_steps=_steps(args, bundle.noise_schedule("decoder")),
                          prior_steps=max(1, args.steps // 2))


def _clip_image(bundle, picture):
    return from_pil(picture, size=bundle.clip.config.image_size)


def variations(args) -> List[Path]:
    bundle, out = _start(args)
    picture = read_image(args.image)
    pipe = _unclip(bundle, args)
    result = pipe.variations(_clip_image(bundle, picture), num_variations=args.num_images, guidance=args.guidance,
                             generator=_generator(args), output_type="pt", progress=not args.quiet)
    return _write(result.images, out, "variations")


def interpolate(args) -> List[Path]:
    bundle, out = _start(args)
    picture_a, picture_b = read_image(args.image_a), read_image(args.image_b)
    pipe = _unclip(bundle, args)
    za = bundle.clip.encode_image(_clip_image(bundle, picture_a))
    zb = bundle.clip.encode_image(_clip_image(bundle, picture_b))
    ts = [i / (args.frames - 1) for i in range(args.frames)]  # --frames >= 2: both endpoints
    result = pipe.interpolate(za, zb, ts, guidance=args.guidance, generator=_generator(args), output_type="pt",
                              progress=not args.quiet)
    return _write(result.images, out, "interpolate")


# Option types: argparse reports their errors as "argument --name: ..." before anything loads.
def _option(text: str, kind, expected: str, valid) -> Any:
    """``kind(text)`` if it parses and ``valid`` holds, else an argparse error saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):  # NaN fails every comparison, so range checks refuse it too
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def int_at_least(minimum: int):
    return lambda text: _option(text, int, f"an integer >= {minimum}", lambda v: v >= minimum)


def finite_arg(text: str) -> float:
    return _option(text, float, "a finite number", math.isfinite)


def guidance_arg(text: str) -> float:
    """--guidance: a finite weight >= 0 (1 = the conditional model alone, 0 = the unconditional)."""
    return _option(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def strength_arg(text: str) -> float:
    """--strength: the fraction of the noise schedule to encode to, in (0, 1]."""
    return _option(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def seed_arg(text: str) -> int:
    return _option(text, int, "an integer in [0, 2**64 - 1]", lambda v: 0 <= v <= MAX_SEED)


def dynamic_threshold_arg(text: str) -> float:
    """--dynamic-threshold: a percentile in (0, 1]."""
    return _option(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def add_threshold_option(p) -> None:
    p.add_argument("--dynamic-threshold", type=dynamic_threshold_arg, default=None, metavar="P",
                   help="Imagen's dynamic thresholding of the predicted x0 at percentile P (e.g. 0.995), for "
                        "guidance of 10 and more; default off: at moderate guidance it desaturates the samples")


def add_commands(sub) -> None:
    def common(p, steps=50, guidance=3.0, out=DEFAULT_OUT):
        p.add_argument("--model", help="model folder (clip/, base/, sr/, prior/, decoder/); default: the shipped weights")
        p.add_argument("--out", default=out, help=f"output folder for the PNGs (default: {out})")
        p.add_argument("--seed", type=seed_arg, default=0, help="random seed, 0 to 2**64 - 1 (default 0)")
        p.add_argument("--steps", type=int_at_least(1), default=steps, help=f"DDIM steps (default {steps})")
        p.add_argument("--guidance", type=guidance_arg, default=guidance,
                       help=f"classifier-free guidance weight >= 0 (default {guidance})")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("generate", help="text-to-image with the cascade")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num-images", type=int_at_least(1), default=4)
    common(p)
    add_threshold_option(p)
    p.set_defaults(run=generate)
    p = sub.add_parser("inpaint", help="repaint the white part of a mask to match a prompt (Imagen Editor)")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="white = repaint; resized to the image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num-images", type=int_at_least(1), default=1)
    common(p)
    add_threshold_option(p)
    p.set_defaults(run=inpaint)
    p = sub.add_parser("diffedit", help="edit an image from a source to a target caption, mask found automatically")
    p.add_argument("--image", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--strength", type=strength_arg, default=0.5, help="encoding ratio r in (0, 1] (default 0.5)")
    common(p)
    p.set_defaults(run=diffedit)
    p = sub.add_parser("imagic", help="edit an image towards a target text (optimise, fine-tune, interpolate)")
    p.add_argument("--image", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--eta", type=finite_arg, nargs="+", default=[0.6, 0.8, 1.0],
                   help="interpolation weights of the target text, one image each (default 0.6 0.8 1.0)")
    p.add_argument("--embedding-steps", type=int_at_least(0), default=100)
    p.add_argument("--finetune-steps", type=int_at_least(0), default=200)
    common(p, guidance=3.0)
    p.set_defaults(run=imagic)
    p = sub.add_parser("variations", help="unCLIP variations of an image")
    p.add_argument("--image", required=True)
    p.add_argument("--num-images", type=int_at_least(1), default=4)
    common(p, guidance=3.0)
    p.set_defaults(run=variations)
    p = sub.add_parser("interpolate", help="unCLIP interpolation between two images")
    p.add_argument("--image-a", required=True)
    p.add_argument("--image-b", required=True)
    p.add_argument("--frames", type=int_at_least(2), default=5,
                   help="images from image A to image B, both included (>= 2, default 5)")
    common(p, guidance=3.0)
    p.set_defaults(run=interpolate)
    p = sub.add_parser("demo", help="every pipeline on the default (or given) models; PNGs and a contact sheet")
    p.add_argument("--embedding-steps", type=int_at_least(0), default=50)
    p.add_argument("--finetune-steps", type=int_at_least(0), default=100)
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

    bundle, out = _start(args)
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
