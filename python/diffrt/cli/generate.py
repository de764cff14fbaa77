"""The image commands: ``diffrt generate | inpaint | diffedit | imagic | variations | interpolate``.
Each reads PNG/JPEG files, runs a pipeline on a model folder (``--model DIR``) and writes PNGs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import torch

from ..images import from_pil
from ..pipelines import DiffEditPipeline, ImagenEditorPipeline, ImagicPipeline, UnCLIPPipeline
from . import prompt_file
from .errors import CommandError
from .files import load_bundle, output_folder, read_image, write_images
from .options import (add_mask_options, add_sampling_options, add_threshold_option, eta_arg, finite_arg, int_at_least,
                      strength_arg)


def _prompt(name: str, text: str) -> str:
    if not text or not text.strip():
        raise CommandError(f"--{name} must not be empty")
    return text


def prepare(args):
    """(model bundle, output folder) of an image command: --out is checked first, so a bad --out
    fails before any model loads or samples. With --backend compile or openvino the bundle's denoisers
    run on that backend."""
    out = output_folder(args.out)
    bundle = load_bundle(args.model)
    backend = getattr(args, "backend", "torch")
    return (bundle if backend == "torch" else AcceleratedBundle(bundle, backend)), out


class AcceleratedBundle:
    """A model bundle whose denoisers (its UNets and the prior) run on ``backend`` ("compile" or "openvino",
    :func:`diffrt.integrations.accelerate.accelerate_denoiser`); everything else is the bundle's own. Training
    (Imagic's fine-tuning) uses ``plain``: neither backend trains."""

    def __init__(self, bundle, backend: str):
        self.plain, self.backend = bundle, backend
        self._denoisers = {}

    def __getattr__(self, name):
        return getattr(self.plain, name)

    def accelerated(self, model):
        from ..integrations.accelerate import accelerate_denoiser

        return accelerate_denoiser(model, backend=self.backend)

    def unet(self, name: str):
        if name not in self._denoisers:
            self._denoisers[name] = self.accelerated(self.plain.unet(name))
        return self._denoisers[name]

    @property
    def prior(self):
        if "prior" not in self._denoisers:
            self._denoisers["prior"] = self.accelerated(self.plain.prior)
        return self._denoisers["prior"]


def fitted_imagic(bundle, args, image: torch.Tensor, target: str) -> ImagicPipeline:
    """Imagic on the base model, fitted to ``image`` and ``target`` (--embedding-steps, --finetune-steps) on
    the plain model, its fine-tuned copy then run on --backend."""
    plain = getattr(bundle, "plain", bundle)
    model, encode = text_to_image_model(plain)
    pipe = ImagicPipeline(model, plain.noise_schedule("base"), encode,
                          num_steps=checked_steps(args, plain.noise_schedule("base")))
    pipe.fit(image, target, embedding_steps=args.embedding_steps, finetune_steps=args.finetune_steps,
             generator=seed_generator(args), progress=not args.quiet)
    if plain is not bundle:
        pipe.model = bundle.accelerated(pipe.model)
    return pipe


def checked_steps(args, noise_schedule) -> int:
    """--steps, at most the model's training timesteps."""
    if args.steps > noise_schedule.num_train_timesteps:
        raise CommandError(f"--steps must be <= {noise_schedule.num_train_timesteps} (the model's training "
                           f"timesteps), got {args.steps}")
    return args.steps


def seed_generator(args) -> torch.Generator:
    """A CPU generator seeded with --seed: the same seed gives the same images on any device."""
    return torch.Generator().manual_seed(args.seed)


def cascade_pipeline(bundle, args) -> ImagenEditorPipeline:
    """Imagen Editor on the bundle's base model, and its super-resolution model when it has one."""
    sr = bundle.unet("sr") if bundle.has("sr") else None
    return ImagenEditorPipeline(bundle.unet("base"), bundle.noise_schedule("base"), bundle.text_encoder,
                                super_resolution=sr, sr_noise_schedule=bundle.noise_schedule("sr") if sr else None,
                                num_steps=checked_steps(args, bundle.noise_schedule("base")),
                                sr_steps=max(1, args.steps // 2))


def generate(args) -> List[Path]:
    if args.prompts is not None:
        prompts = prompt_file.read_prompts(args.prompts)  # a bad prompt file fails before --out is made
        bundle, out = prepare(args)
        return prompt_file.generate_from_file(args, prompts, out, cascade_pipeline(bundle, args))
    prompt = _prompt("prompt", args.prompt)
    if args.batch_size is not None:
        raise CommandError("--batch-size needs --prompts FILE; with --prompt the --num-images images are sampled "
                           "together")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise CommandError(f"--prompt under torchrun (WORLD_SIZE={world}) would write the same images in every "
                           f"process; share the work with --prompts FILE")
    bundle, out = prepare(args)
    pipe = cascade_pipeline(bundle, args)
    result = pipe(prompt, num_images_per_prompt=args.num_images, guidance=args.guidance,
                  dynamic_threshold=args.dynamic_threshold, composite=False, generator=seed_generator(args),
                  output_type="pt", progress=not args.quiet)
    return write_images(result.images, out, "generate")


def inpaint(args) -> List[Path]:
    prompt = _prompt("prompt", args.prompt)
    bundle, out = prepare(args)
    image, mask = read_image(args.image), read_image(args.mask, mode="L")
    pipe = cascade_pipeline(bundle, args)
    last = bundle.unet("sr") if bundle.has("sr") else bundle.unet("base")
    side = last.config.cond_side
    if image.size != (side, side):
        print(f"diffrt inpaint: resizing {args.image} from {image.size[0]}×{image.size[1]} to {side}×{side}")
    if mask.size != image.size:
        print(f"diffrt inpaint: resizing the mask from {mask.size[0]}×{mask.size[1]} to the image's size")
    result = pipe(prompt, from_pil(image, size=side), mask, guidance=args.guidance,
                  dynamic_threshold=args.dynamic_threshold, num_images_per_prompt=args.num_images,
                  generator=seed_generator(args), output_type="pt", progress=not args.quiet)
    return write_images(result.images, out, "inpaint")


def text_to_image_model(bundle):
    """The base UNet as a text-to-image model (whole image masked) for DiffEdit and Imagic."""
    return bundle.unet("base"), lambda prompts: bundle.text_to_image_condition("base", list(prompts))


def diffedit(args) -> List[Path]:
    source, target = _prompt("source", args.source), _prompt("target", args.target)
    bundle, out = prepare(args)
    picture = read_image(args.image)
    model, encode = text_to_image_model(bundle)
    pipe = DiffEditPipeline(model, bundle.noise_schedule("base"), encode,
                            num_steps=checked_steps(args, bundle.noise_schedule("base")))
    image = from_pil(picture, size=model.config.image_size)
    result = pipe(image, source, target, strength=args.strength, guidance=args.guidance,
                  mask_strength=args.mask_strength, mask_normalise=args.mask_normalise, mask_smooth=args.mask_smooth,
                  threshold=args.mask_threshold, generator=seed_generator(args), output_type="pt",
                  progress=not args.quiet)
    overlay = image.clone()
    overlay[:, 0:1] = torch.where(result.mask.bool(), torch.ones_like(overlay[:, :1]), overlay[:, :1])  # mask in red
    return write_images(result.images, out, "diffedit") + write_images(overlay, out, "diffedit_mask")


def imagic(args) -> List[Path]:
    target = _prompt("target", args.target)
    bundle, out = prepare(args)
    picture = read_image(args.image)
    image = from_pil(picture, size=bundle.unet("base").config.image_size)
    pipe = fitted_imagic(bundle, args, image, target)
    result = pipe(args.eta, guidance=args.guidance, generator=seed_generator(args), output_type="pt",
                  progress=not args.quiet)
    return write_images(result.images, out, "imagic")


def unclip_pipeline(bundle, args) -> UnCLIPPipeline:
    return UnCLIPPipeline(bundle.prior, bundle.unet("decoder"), bundle.text_encoder, bundle.clip.encode_image,
                          noise_schedule=bundle.noise_schedule("decoder"),
                          prior_noise_schedule=bundle.noise_schedule("prior"),
                          num_steps=checked_steps(args, bundle.noise_schedule("decoder")),
                          prior_steps=max(1, args.steps // 2))


def _clip_image(bundle, picture):
    return from_pil(picture, size=bundle.clip.config.image_size)


def variations(args) -> List[Path]:
    bundle, out = prepare(args)
    picture = read_image(args.image)
    pipe = unclip_pipeline(bundle, args)
    result = pipe.variations(_clip_image(bundle, picture), num_variations=args.num_images, guidance=args.guidance,
                             eta=args.eta, generator=seed_generator(args), output_type="pt", progress=not args.quiet)
    return write_images(result.images, out, "variations")


def interpolate(args) -> List[Path]:
    bundle, out = prepare(args)
    picture_a, picture_b = read_image(args.image_a), read_image(args.image_b)
    pipe = unclip_pipeline(bundle, args)
    za = bundle.clip.encode_image(_clip_image(bundle, picture_a))
    zb = bundle.clip.encode_image(_clip_image(bundle, picture_b))
    ts = [i / (args.frames - 1) for i in range(args.frames)]  # --frames >= 2: both endpoints
    result = pipe.interpolate(za, zb, ts, guidance=args.guidance, generator=seed_generator(args), output_type="pt",
                              progress=not args.quiet)
    return write_images(result.images, out, "interpolate")


def add_commands(sub) -> None:
    p = sub.add_parser("generate", help="text-to-image with the cascade, from one prompt or a prompt file")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt; writes OUT/generate_000.png, …")
    source.add_argument("--prompts", metavar="FILE",
                        help="a UTF-8 file of prompts, one a line (blank lines and # comments skipped); writes "
                             f"OUT/PPPPP_KKK.png (prompt P from 0, image K) and OUT/{prompt_file.MANIFEST}; images "
                             "already there are skipped, so running the command again resumes it; under torchrun "
                             "the processes share the images")
    p.add_argument("--num-images", type=int_at_least(1), default=4, help="images per prompt (default 4)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help=f"with --prompts: images sampled together (default {prompt_file.DEFAULT_BATCH_SIZE}); "
                        "the images do not depend on it")
    add_sampling_options(p)
    add_threshold_option(p)
    p.set_defaults(run=generate)
    p = sub.add_parser("inpaint", help="repaint the white part of a mask to match a prompt (Imagen Editor)")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True, help="white = repaint; resized to the image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num-images", type=int_at_least(1), default=1)
    add_sampling_options(p)
    add_threshold_option(p)
    p.set_defaults(run=inpaint)
    p = sub.add_parser("diffedit", help="edit an image from a source to a target caption, mask found automatically")
    p.add_argument("--image", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--strength", type=strength_arg, default=0.5, help="encoding ratio r in (0, 1] (default 0.5)")
    add_mask_options(p)
    add_sampling_options(p)
    p.set_defaults(run=diffedit)
    p = sub.add_parser("imagic", help="edit an image towards a target text (optimise, fine-tune, interpolate)")
    p.add_argument("--image", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--eta", type=finite_arg, nargs="+", default=[0.6, 0.8, 1.0],
                   help="interpolation weights of the target text, one image each (default 0.6 0.8 1.0)")
    p.add_argument("--embedding-steps", type=int_at_least(0), default=100)
    p.add_argument("--finetune-steps", type=int_at_least(0), default=200)
    add_sampling_options(p)
    p.set_defaults(run=imagic)
    p = sub.add_parser("variations", help="unCLIP variations of an image")
    p.add_argument("--image", required=True)
    p.add_argument("--num-images", type=int_at_least(1), default=4)
    p.add_argument("--eta", type=eta_arg, default=0.1,
                   help="DDIM η: how far the variations stray from the input (default 0.1; 1 ignores the input's "
                        "inverted noise on the shipped decoder's zero-terminal-SNR schedule)")
    add_sampling_options(p, guidance=1.0)
    p.set_defaults(run=variations)
    p = sub.add_parser("interpolate", help="unCLIP interpolation between two images")
    p.add_argument("--image-a", required=True)
    p.add_argument("--image-b", required=True)
    p.add_argument("--frames", type=int_at_least(2), default=5,
                   help="images from image A to image B, both included (>= 2, default 5)")
    add_sampling_options(p)
    p.set_defaults(run=interpolate)
