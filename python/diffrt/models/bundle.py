"""A model bundle: the folder of trained diffrt models the pipelines and the ``diffrt`` commands use.

    DIR/clip/      CLIP + tokenizer        (diffrt train clip → run/final)
    DIR/base/      base UNet               (diffrt train base → run/final, with diffusion.json)
    DIR/sr/        super-resolution UNet   (optional)
    DIR/prior/     DALL-E 2 prior          (optional: unCLIP)
    DIR/decoder/   unCLIP decoder          (optional: unCLIP)

Each part loads on first use; a missing or damaged part raises an error naming its folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Union

import torch
from safetensors.torch import load as load_safetensors, save_file

from ..schedules import NoiseSchedule
from .clip import CLIP
from .prior import DiffusionPrior
from .serialization import WEIGHTS_FILE
from .text_encoder import TextEncoder
from .tokenizer import Tokenizer
from .unet import UNet

DIFFUSION_FILE = "diffusion.json"  # a diffusion model's diffusion table: NoiseSchedule.from_config reads it
PARTS = ("clip", "base", "sr", "prior", "decoder")
DEFAULT_DIRECTORY = Path(__file__).parent.parent / "weights"  # the bundle shipped inside the package


class Bundle:
    def __init__(self, directory):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: model folder not found")
        self._unets: Dict[str, UNet] = {}
        self._schedules: Dict[str, NoiseSchedule] = {}

    def _part(self, name: str) -> Path:
        path = self.directory / name
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: this model folder has no '{name}' model")
        return path

    def has(self, name: str) -> bool:
        return (self.directory / name).is_dir()

    @functools.cached_property
    def clip(self) -> CLIP:
        clip = CLIP.from_pretrained(self._part("clip"))
        for p in clip.parameters():
            p.requires_grad_(False)
        return clip

    @functools.cached_property
    def text_encoder(self) -> TextEncoder:
        return TextEncoder(Tokenizer.from_pretrained(self._part("clip")), self.clip)

    def unet(self, name: str) -> UNet:
        if name not in self._unets:
            self._unets[name] = UNet.from_pretrained(self._part(name))
        return self._unets[name]

    @functools.cached_property
    def prior(self) -> DiffusionPrior:
        return DiffusionPrior.from_pretrained(self._part("prior"))

    def noise_schedule(self, name: str) -> NoiseSchedule:
        if name not in self._schedules:
            file = self._part(name) / DIFFUSION_FILE
            if not file.is_file():
                raise FileNotFoundError(f"{file}: the noise schedule of '{name}' is missing")
            try:
                diffusion = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{file}: not valid UTF-8 JSON ({e})") from e
            if not isinstance(diffusion, dict):
                raise ValueError(f"{file}: expected a JSON object, got {type(diffusion).__name__}")
            try:
                self._schedules[name] = NoiseSchedule.from_config(diffusion)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{file}: invalid noise schedule ({e})") from e
        return self._schedules[name]

    def text_to_image_condition(self, name: str, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """Text condition for an image-conditioned UNet used as a text-to-image model: the whole
        image masked (what ``p_full`` trains), so DiffEdit and Imagic can run on the base model."""
        return {**self.text_encoder(prompts), **self.unet(name).full_mask_condition(len(prompts))}


def load(directory=None) -> Bundle:
    """The model folder ``directory``, or the bundle shipped with diffrt when it is None."""
    if directory is None:
        if not (DEFAULT_DIRECTORY / "clip").is_dir():
            raise FileNotFoundError(f"{DEFAULT_DIRECTORY}: this build ships no default weights; "
                                    "pass a model folder (clip/, base/, …)")
        directory = DEFAULT_DIRECTORY
    return Bundle(directory)


def pack(parts: Mapping[str, Union[str, Path]], out: Union[str, Path], *, dtype: torch.dtype = torch.float16) -> Bundle:
    """Assemble trained models (each a ``diffrt train`` run's ``final/`` folder) into the model folder
    ``out``, storing floating-point weights as ``dtype``: float16 halves the files and loads back into
    float32 models with a relative rounding error of at most 2^-11 per weight.

    The new folder is built beside ``out`` (with what ``out`` held besides the parts replaced), every
    part is loaded from it, and only then is it swapped in: a part that fails leaves ``out`` as it was."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or "clip" not in parts:
        raise ValueError(f"parts must include 'clip' and be among {PARTS}, got {sorted(parts)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (the bundle is written as a folder)")
    for name, source in parts.items():
        if not (Path(source) / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{Path(source) / WEIGHTS_FILE}: no trained '{name}' model here")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        if out.is_dir():  # keep what the parts named here do not replace
            for entry in out.iterdir():
                if entry.name not in parts:
                    _copy_entry(entry, staging / entry.name)
        for name, source in parts.items():
            source, target = Path(source), staging / name
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
            tensors = load_safetensors((source / WEIGHTS_FILE).read_bytes())
            save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
                      str(target / WEIGHTS_FILE))
        bundle = Bundle(staging)
        for name in ("clip", *(n for n in parts if n != "clip")):  # load every part now, not at first use
            try:
                if name == "clip":
                    bundle.text_encoder  # noqa: B018
                elif name == "prior":
                    bundle.prior  # noqa: B018
                else:
                    bundle.unet(name)
                    bundle.noise_schedule(name)
            except Exception as e:  # name the source folder, not the staging copy the error saw
                problem = str(e).replace(str(staging / name), str(parts[name]))
                raise ValueError(f"{parts[name]}: the trained '{name}' model does not load ({problem})") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, out)
    return Bundle(out)


def _copy_entry(entry: Path, target: Path) -> None:
    if entry.is_symlink():
        os.symlink(os.readlink(entry), target)  # a part linked in stays a link
    elif entry.is_dir():
        shutil.copytree(entry, target, symlinks=True)
    else:
        shutil.copy2(entry, target)


def _swap_in(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    if not out.exists() and not out.is_symlink():
        os.replace(staging, out)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(previous)  # only its unique name is wanted
    os.replace(out, previous)
    os.replace(staging, out)
    if previous.is_symlink() or not previous.is_dir():
        previous.unlink()
    else:
        shutil.rmtree(previous, ignore_errors=True)


__all__ = ["Bundle", "DEFAULT_DIRECTORY", "DIFFUSION_FILE", "PARTS", "load", "pack"]
