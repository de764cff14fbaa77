"""What every pipeline shares: prompt lists, output conversion, the pixel-space codec."""

from __future__ import annotations

from typing import Any, List, Sequence, Union

import torch

from ..images import to_pil, to_uint8

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


def check_image(name: str, image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or not image.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (B, C, H, W) in [−1, 1] (convert PIL with diffrt.images.from_pil)")
    return image


__all__ = ["OUTPUT_TYPES", "PixelCodec", "check_image", "convert_output", "prompt_list"]
