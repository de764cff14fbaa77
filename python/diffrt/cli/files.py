"""What the commands read and write: image files, the output folder, PNGs, the model folder."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import torch
from PIL import Image, UnidentifiedImageError

from ..models import bundle as bundles
from ..images import to_8bit, to_pil
from .errors import CommandError

EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that shows the picture upright (what ImageOps.exif_transpose does)
_T = getattr(Image, "Transpose", Image)  # the enum from Pillow 9.1, module constants before
_UPRIGHT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
            7: _T.TRANSVERSE, 8: _T.ROTATE_90}


def read_image(path: str, *, mode: str = "RGB") -> Image.Image:
    """An image file as 8-bit RGB (or L for masks), upright per its EXIF orientation; 16-bit and
    transparent images as :func:`diffrt.images.to_8bit` describes. Images of more than PIL's
    ``Image.MAX_IMAGE_PIXELS`` pixels are refused (a decompression bomb, or far too large to edit)."""
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


def write_images(images: torch.Tensor, out: Path, stem: str) -> List[Path]:
    """(B, C, H, W) images in [−1, 1] as OUT/STEM_000.png, …; nothing is written if any value is not finite."""
    if not torch.isfinite(images).all():  # to_pil would save NaN as black
        raise CommandError(f"sampling produced non-finite pixel values (NaN or ±inf); nothing written to {out}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(to_pil(images)):
        path = out / f"{stem}_{i:03d}.png"
        im.save(path)
        paths.append(path)
    return paths


def load_bundle(model: Optional[str]) -> bundles.Bundle:
    """The model folder of --model, or the weights shipped with diffrt when it is None."""
    try:
        return bundles.load(model)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from e
