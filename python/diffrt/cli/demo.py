"""``diffrt demo``: every pipeline on one model folder — cascade generation and inpainting, DiffEdit
with its mask drawn over the input, an Imagic η sweep, unCLIP generation / variations /
interpolation / a text diff — as single PNGs plus a labelled contact sheet, where each row shows
the pipeline's inputs (images, masks) first and then its outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from ..data import ProceduralDataset
from ..data.world import caption_full
from ..eval.items import with_value
from ..images import contact_sheet
from ..pipelines import DiffEditPipeline
from .files import write_images
from .generate import cascade_pipeline, fitted_imagic, prepare, seed_generator, text_to_image_model, unclip_pipeline
from .options import DIFFEDIT_MASK, add_sampling_options, add_threshold_option, int_at_least

PROMPT = "a large red solid circle in the middle on a plain blue background"  # the world's Full-caption wording


def demo(args) -> List[Path]:
    bundle, out = prepare(args)
    quiet = args.quiet
    base = bundle.unet("base")
    last = bundle.unet("sr") if bundle.has("sr") else base
    side = last.config.cond_side
    world = ProceduralDataset(max(32, side), length=1, seed=args.seed)
    sample = world[0]
    scene = F.interpolate(sample["image"][None], size=(side, side), mode="area")
    mask = (F.interpolate(sample["mask"][None], size=(side, side), mode="area") > 0).float()
    rows = []  # (label, images)

    def stage(label, images, inputs=None):
        """Write the outputs; the sheet's row shows ``inputs`` (scaled to the outputs' side) before them."""
        shown = images.float().clamp(-1, 1)
        if inputs is not None:
            side = shown.shape[-1]
            shown = torch.cat([F.interpolate(inputs.float().clamp(-1, 1), size=(side, side), mode="nearest"), shown])
        rows.append((label, shown))
        return write_images(images, out, label.split(":")[0].replace(" ", "_"))

    written: List[Path] = []
    cascade = cascade_pipeline(bundle, args)
    g = seed_generator(args)
    threshold = args.dynamic_threshold
    written += stage("generate: " + PROMPT, cascade(PROMPT, num_images_per_prompt=3, composite=False, generator=g,
                                                    guidance=args.guidance, dynamic_threshold=threshold,
                                                    output_type="pt", progress=not quiet).images)
    written += stage("inpaint: a yellow star (input, mask, then the inpainted images)",
                     cascade("a yellow star", scene, mask, generator=g, guidance=args.guidance,
                             dynamic_threshold=threshold, output_type="pt", progress=not quiet).images,
                     inputs=torch.cat([scene, _overlay(scene, mask)]))
    model, encode = text_to_image_model(bundle)
    small = F.interpolate(scene, size=(base.config.image_size,) * 2, mode="area")
    edit = DiffEditPipeline(model, bundle.noise_schedule("base"), encode, num_steps=args.steps)
    # DiffEdit and the text diff read captions of the whole image (DiffEdit §3.2, unCLIP §3.3): the scene's Full
    # caption, and the same caption with the object made a blue square, so the two differ in its words alone
    spec, target_object = world.scene(0), max(sample["target"], 0)
    source = sample["captions"]["simple"]
    as_square = [with_value(with_value(o, "colour", "blue"), "shape", "square") if i == target_object else o
                 for i, o in enumerate(spec.objects)]
    full_source, full_target = caption_full(spec), caption_full(dataclasses.replace(spec, objects=tuple(as_square)))
    edited = edit(small, full_source, full_target, generator=g, output_type="pt", progress=not quiet, **DIFFEDIT_MASK)
    written += stage(f"diffedit: {source} -> a blue square (input, its automatic mask, the edit)", edited.images,
                     inputs=torch.cat([small, _overlay(small, edited.mask)]))
    target = "a green " + source.split()[-1]
    imagic = fitted_imagic(bundle, args, small, target)
    written += stage(f"imagic: input, then '{target}' at eta 0, 0.5, 1",
                     imagic([0.0, 0.5, 1.0], generator=g, output_type="pt", progress=not quiet).images, inputs=small)
    if bundle.has("prior") and bundle.has("decoder"):
        unclip = unclip_pipeline(bundle, args)
        generated = unclip(PROMPT, num_images_per_prompt=2, generator=g, output_type="pt", progress=not quiet)
        written += stage("unclip: " + PROMPT, generated.images)
        clip_in = F.interpolate(scene, size=(bundle.clip.config.image_size,) * 2, mode="area")
        written += stage("variations: input, then 3 variations of it",
                         unclip.variations(clip_in, num_variations=3, generator=g, output_type="pt",
                                           progress=not quiet).images, inputs=clip_in)
        za, zb = bundle.clip.encode_image(clip_in), generated.image_embeds[:1]
        written += stage("interpolate: input A, generated image B, then t = 0, 0.5, 1 from A to B",
                         unclip.interpolate(za, zb, (0.0, 0.5, 1.0), generator=g, output_type="pt",
                                            progress=not quiet).images,
                         inputs=torch.cat([clip_in, F.interpolate(generated.images[:1].float(),
                                                                  size=clip_in.shape[-2:], mode="area")]))
        written += stage(f"text diff: input, then moved from '{source}' to 'a blue square' by 0, 0.3, 0.6",
                         unclip.text_diff(clip_in, full_source, full_target, (0.0, 0.3, 0.6), output_type="pt",
                                          progress=not quiet).images, inputs=clip_in)
    sheet_path = out / "contact_sheet.png"
    contact_sheet(rows).save(sheet_path)
    return written + [sheet_path]


def _overlay(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images with the mask's pixels painted red."""
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    return torch.where(mask.bool(), red, images.float())


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="every pipeline on the default (or given) models; PNGs and a contact sheet")
    p.add_argument("--embedding-steps", type=int_at_least(0), default=50)
    p.add_argument("--finetune-steps", type=int_at_least(0), default=100)
    add_sampling_options(p, steps=25, out="diffrt-demo")
    add_threshold_option(p)
    p.set_defaults(run=demo)
