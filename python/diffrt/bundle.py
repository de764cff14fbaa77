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
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import torch

from .models.clip import CLIP
from .models.prior import DiffusionPrior
from .models.text_encoder import TextEncoder
from .models.tokenizer import Tokenizer
from .models.unet import UNet
from .schedules import NoiseSchedule

DIFFUSION_FILE = "diffusion.json"
PARTS = ("clip", "base", "sr", "prior", "decoder")
DEFAULT_DIRECTORY = Path(__file__).parent / "weights"  # the bundle shipped inside the package


def noise_schedule_from(diffusion: Dict[str, Any]) -> NoiseSchedule:
    return NoiseSchedule.make(diffusion.get("beta_schedule", "linear"), beta_start=float(diffusion.get("beta_start", 1e-4)),
                              beta_end=float(diffusion.get("beta_end", 0.02)),
                              zero_terminal_snr=bool(diffusion.get("zero_terminal_snr", False)))


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
                self._schedules[name] = noise_schedule_from(json.loads(file.read_text()))
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: not valid JSON ({e})") from e
        return self._schedules[name]

    def text_to_image_condition(self, name: str, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """Text condition for an image-conditioned UNet used as a text-to-image model: the whole
        image masked (what ``p_full`` trains), so DiffEdit and Imagic can run on the base model."""
        cond = self.text_encoder(prompts)
        unet = self.unet(name)
        if unet.config.cond_image:
            side = unet.config.cond_image_size or unet.config.image_size
            cond.update(image=torch.zeros(len(prompts), 3, side, side), mask=torch.ones(len(prompts), 1, side, side))
        return cond


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
    float32 models with a relative rounding error of at most 2^-11 per weight."""
    from safetensors.torch import load, save_file

    from .models.serialization import WEIGHTS_FILE

    unknown = sorted(set(parts) - set(PARTS))
    if unknown or "clip" not in parts:
        raise ValueError(f"parts must include 'clip' and be among {PARTS}, got {sorted(parts)}")
    out = Path(out)
    for name, source in parts.items():
        source = Path(source)
        if not (source / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{source / WEIGHTS_FILE}: no trained '{name}' model here")
        target = out / name
        tensors = load((source / WEIGHTS_FILE).read_bytes())  # in memory: the source may be the target
        if not (target.exists() and target.resolve() == source.resolve()):  # else re-store it in place
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(target / WEIGHTS_FILE))
    bundle = Bundle(out)
    bundle.text_encoder  # noqa: B018 — load every part now: a bad part fails here, not at first use
    for name in parts:
        if name == "prior":
            bundle.prior  # noqa: B018
        elif name != "clip":
            bundle.unet(name)
            bundle.noise_schedule(name)
    return bundle


__all__ = ["Bundle", "DEFAULT_DIRECTORY", "PARTS", "load", "noise_schedule_from", "pack"]
