"""Image conversions at the package boundary: tensors in [−1, 1] ⇄ PIL / numpy, and contact sheets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, C) uint8."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> List[Image.Image]:
    arrays = to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_8bit(image: Image.Image, mode: str = "RGB", *, name: str = "image") -> Image.Image:
    """Any PIL image → an 8-bit ``mode`` ("RGB" or "L") image that looks as the file intends.

    - 16-bit grayscale (modes I;16…, and mode I read from a PNG, whose samples have at most 16 bits) is
      scaled 65535 → 255; PIL's own ``convert`` clips it, turning nearly every pixel white.
    - 32-bit integer (other mode I) and float (mode F) images have no defined white level: refused.
    - Transparency (RGBA, LA, PA, a palette or colour key with transparency): an image is composited
      over white; a mask (``mode="L"``) must be opaque — "transparent = repaint" and "transparent =
      keep" are both in use, so diffrt does not guess.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
        samples = np.asarray(image).astype(np.float64)
        if samples.min(initial=0) < 0 or samples.max(initial=0) > 65535:
            raise ValueError(f"{name}: 16-bit samples out of range [0, 65535]")
        return Image.fromarray(np.round(samples / 257).astype(np.uint8)).convert(mode)  # 65535/257 = 255
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise ValueError(f"{name}: {kind} pixels (mode {image.mode}) have no defined white level; "
                         "save the image with 8 or 16 bits per sample")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = _convert(image, "RGBA", name)
        if rgba.getchannel("A").getextrema()[0] < 255:
            if mode == "L":
                raise ValueError(f"{name}: the mask has transparent pixels; a mask must be opaque "
                                 "(white = repaint, black = keep)")
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        image = rgba
    return _convert(image, mode, name)


def _convert(image: Image.Image, mode: str, name: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:  # PIL converts some modes (e.g. LAB) to RGB only
        pass
    try:
        return image.convert("RGB").convert(mode)
    except ValueError as e:
        raise ValueError(f"{name}: cannot convert mode {image.mode} pixels to {mode} ({e})") from e


def from_pil(images: Union[Image.Image, Sequence[Image.Image]], size: int = None) -> torch.Tensor:
    """PIL images → (B, 3, H, W) float in [−1, 1] (resized to size×size with bicubic if given); see
    :func:`to_8bit` for 16-bit and transparent images."""
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for i, im in enumerate(images):
        im = to_8bit(im, "RGB", name="image" if len(images) == 1 else f"images[{i}]")
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


def contact_sheet(rows: Sequence[Tuple[str, torch.Tensor]], height: int = 96, min_width: int = 640) -> Image.Image:
    """One labelled row per (label, (B, C, H, W) images in [−1, 1]), each image scaled to height×height
    (nearest neighbour, so pixels stay visible); rows are at least ``min_width`` wide."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    sheet_rows = []
    for label, images in rows:
        tiles = [im.resize((height, height), Image.NEAREST) for im in to_pil(images)]
        row = Image.new("RGB", (max(min_width, len(tiles) * (height + 4) + 4), height + 22), "white")
        ImageDraw.Draw(row).text((4, 4), label, fill="black")
        for i, tile in enumerate(tiles):
            row.paste(tile, (4 + i * (height + 4), 20))
        sheet_rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in sheet_rows), sum(r.height for r in sheet_rows)), "white")
    y = 0
    for row in sheet_rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet
