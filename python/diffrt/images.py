"""Image conversions at the package boundary: tensors in [−1, 1] ⇄ PIL / numpy, and contact grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, C) uint8."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> List[Image.Image]:
    arrays = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


def from_pil(images: Union[Image.Image, Sequence[Image.Image]], size: int = None) -> torch.Tensor:
    """PIL images → (B, 3, H, W) float in [−1, 1] (resized to size×size with bicubic if given)."""
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for im in images:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def make_grid(images: torch.Tensor, nrow: int = None, pad: int = 2) -> Image.Image:
    """A contact sheet of (B, C, H, W) images in [−1, 1], ``nrow`` per row."""
    arrays = to_uint8(images)
    b, h, w, c = arrays.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    sheet = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, a in enumerate(arrays):
        r, col = divmod(i, nrow)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = a
    return Image.fromarray(sheet[..., 0] if c == 1 else sheet)


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: int = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow).save(path)
    return path
