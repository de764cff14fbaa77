"""What every pipeline shares: prompt lists, output conversion, the pixel-space codec, the noise
draw, and the checks of guidance arguments."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, List, Sequence, Union

import numpy as np
import torch

from ..images import to_8bit, to_pil, to_uint8
from ..precision import float32_compute
from ..sampling import Guidance

OUTPUT_TYPES = ("pil", "np", "pt")


def prompt_list(name: str, prompts: Union[str, Sequence[str]], batch: int = None, *, allow_empty: bool = False) -> List[str]:
    """One prompt or a list → a list (repeated to ``batch`` when one prompt is given)."""
    if isinstance(prompts, str):
        prompts = [prompts] * (batch or 1)
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a non-empty list of strings")
    if not allow_empty and any(not p.strip() for p in prompts):
        raise ValueError(f"{name} must not be empty (use '' only for the unconditional prompt)")
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"{name} has {len(prompts)} prompts for {batch} images")
    return prompts


def convert_output(images: torch.Tensor, output_type: str) -> Any:
    """(B, C, H, W) in [−1, 1] → a list of PIL images, a (B, H, W, C) uint8 array, or the tensor."""
    if output_type == "pil":
        return to_pil(images)
    if output_type == "np":
        return to_uint8(images)
    if output_type == "pt":
        return images
    raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


class PixelCodec:
    """The identity codec: pixel-space models diffuse the image itself."""

    def encode(self, images: torch.Tensor, **_: Any) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


def model_placement(model: Any):
    """(device, dtype) of a model's first parameter; CPU float32 for parameter-less denoisers."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return (first.device, first.dtype) if first is not None else (torch.device("cpu"), torch.float32)


Generators = Union[None, torch.Generator, Sequence[torch.Generator]]


def check_generators(generator: Generators, batch: int) -> Generators:
    """``generator`` as the pipelines take it: None, one generator, or a list of ``batch`` generators,
    one per output image (as diffusers accepts), so an image's noise depends on its own generator
    only, not on which images share its batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    if len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} generators for {batch} images (one per image)")
    return list(generator)


def randn(shape, generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) in ``dtype``, drawn on the generator's device — CPU without a generator, so a seed means
    the same noise on any device — then moved to ``device``, where the model runs. Drawn in ``dtype``
    itself, as diffusers' randn_tensor does (a bfloat16 draw is not the float32 draw rounded). With a
    list of generators, row i is drawn from generator i alone, as a (1, …) draw: the same noise as a
    single generator gives a batch of one."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: one generator per row")
        return torch.cat([randn((1, *shape[1:]), g, device, dtype) for g in generator])
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def check_guidance(name: str, guidance: Guidance) -> Guidance:
    """A guidance argument as :func:`diffrt.ddim_sample` takes it — None (unguided), a finite number,
    a real 1-D tensor of per-sample weights, or a schedule (step, num_steps) -> w — checked where the
    pipeline receives it, so the error names the argument."""
    if guidance is None:
        return None
    if isinstance(guidance, torch.Tensor):
        if guidance.dim() > 1 or guidance.is_complex() or guidance.dtype == torch.bool:
            raise ValueError(f"{name} as a tensor must be a real 1-D tensor of per-sample weights, got a "
                             f"{guidance.dtype} tensor of shape {tuple(guidance.shape)}")
        if not bool(torch.isfinite(guidance).all()):
            raise ValueError(f"{name} must hold finite weights, got {guidance.tolist()}")
        return guidance
    if isinstance(guidance, numbers.Real) and not isinstance(guidance, bool):
        if not math.isfinite(guidance):
            raise ValueError(f"{name} must be a finite number, got {guidance}")
        return guidance
    if callable(guidance):
        return guidance
    raise TypeError(f"{name} must be a number, a 1-D tensor of per-sample weights, a guidance schedule "
                    f"(step, num_steps) -> w, or None; got {type(guidance).__name__}")


def needs_uncond(guidance: Guidance) -> bool:
    """Whether sampling with ``guidance`` may need the unconditional condition: not for None nor for
    the number 1 (ε̃ = ε_u + 1·(ε_c − ε_u) = ε_c); a tensor or a schedule may differ per sample and
    step, so the sampler decides (it skips the unconditional half wherever every weight is 1)."""
    return guidance is not None and not (isinstance(guidance, numbers.Real) and guidance == 1)


def map_weights(guidance: Guidance, fn: Callable[[torch.Tensor], torch.Tensor]) -> Guidance:
    """``guidance`` with ``fn`` applied to every tensor of per-sample weights it gives, directly or
    from a schedule at each step: how a pipeline maps weights given per output image onto the rows
    its sampler runs. Numbers and None pass through."""
    if isinstance(guidance, torch.Tensor):
        return fn(guidance)
    if guidance is None or isinstance(guidance, numbers.Real) or not callable(guidance):
        return guidance

    def mapped(step: int, num_steps: int):
        w = guidance(step, num_steps)
        return fn(w) if isinstance(w, torch.Tensor) else w

    return mapped


def as_mask(mask: Any, size: int, batch: int) -> torch.Tensor:
    """A mask given as a PIL image, a numpy array or a tensor ((H, W), (1, H, W), (B, 1, H, W); values
    in [0, 1], or 0/255 for uint8 and PIL), of any size → float (B, 1, size, size), resized with area
    averaging (so a binary mask stays binary where the resize keeps whole pixels)."""
    from PIL import Image

    if isinstance(mask, Image.Image):
        mask = np.asarray(to_8bit(mask, "L", name="mask"))  # 16-bit masks scaled, not clipped
    if isinstance(mask, np.ndarray):
        scale = 255.0 if mask.dtype == np.uint8 else 1.0
        mask = torch.from_numpy(mask.astype(np.float32) / scale)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a PIL image, a numpy array or a tensor, got {type(mask).__name__}")
    mask = mask.float()
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None] if mask.shape[0] != 1 or batch == 1 else mask[None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, batch):
        raise ValueError(f"mask must have shape (H, W), (B, H, W) or (B or 1, 1, H, W), got {tuple(mask.shape)}")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = repaint; uint8 and PIL masks use 0 and 255)")
    if mask.shape[-2:] != (size, size):
        mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="area")
    return mask.expand(batch, -1, -1, -1)


def check_image(name: str, image: torch.Tensor, model: Any = None) -> torch.Tensor:
    """A float (B, C, H, W) tensor; with ``model``, also the size and channels a diffrt model expects."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (B, C, H, W) in [−1, 1] (convert PIL with diffrt.images.from_pil)")
    size = getattr(getattr(model, "config", None), "image_size", None)
    if size is not None and image.shape[-2:] != (size, size):
        raise ValueError(f"{name} is {image.shape[-2]}×{image.shape[-1]} but the model works at {size}×{size}; "
                         f"resize it first (diffrt.images.from_pil(image, size={size}))")
    channels = getattr(model, "in_channels", None)
    if channels is not None and image.shape[1] != channels:
        raise ValueError(f"{name} has {image.shape[1]} channels but the model takes {channels}")
    return image


def float32_on_slow_bf16_cpu(*attributes: str):
    """Decorates a pipeline method: during the call, the bfloat16 CPU weights of the models held in the
    pipeline's ``attributes`` are float32 on a CPU without fast bfloat16 arithmetic, so they compute in
    float32 (and are bfloat16 again after, see :func:`diffrt.precision.float32_compute`)."""
    def decorate(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            models = [getattr(self, name, None) for name in attributes]
            what = f"{type(self).__name__}.{method.__name__} with bfloat16 weights"
            with float32_compute(models, what=what, stacklevel=4):  # the warning points at the caller
                return method(self, *args, **kwargs)
        return run
    return decorate


__all__ = ["Generators", "OUTPUT_TYPES", "PixelCodec", "as_mask", "check_generators", "check_guidance", "check_image",
           "convert_output", "float32_on_slow_bf16_cpu", "map_weights", "model_placement", "needs_uncond", "prompt_list",
           "randn"]
