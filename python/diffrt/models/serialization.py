"""Every diffrt model saves as a folder: ``config.json`` (its dataclass config and type) and
``model.safetensors``. Loading checks each file and names the file and what is wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Type, TypeVar, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

M = TypeVar("M", bound="SavableModel")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash leaves the old file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class SavableModel:
    """Mixin for ``nn.Module`` models built from one dataclass ``config``."""

    config_class: ClassVar[Type]
    config: Any

    def save_pretrained(self, directory: Union[str, Path]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"model_type": type(self).__name__, **dataclasses.asdict(self.config)}
        _atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
        _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_model(self, tmp))

    @classmethod
    def load_config(cls, directory: Union[str, Path]):
        file = Path(directory) / CONFIG_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: model config not found")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
        model_type = data.pop("model_type", None)
        if model_type != cls.__name__:
            raise ValueError(f"{file}: holds a {model_type!r} config, not a {cls.__name__}")
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{file}: unknown {cls.__name__} config keys {unknown}")
        for key, value in data.items():  # JSON has lists where configs have tuples
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls.config_class(**data)

    @classmethod
    def from_pretrained(cls: Type[M], directory: Union[str, Path], *, dtype: torch.dtype = None) -> M:
        model = cls(cls.load_config(directory))
        file = Path(directory) / WEIGHTS_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: model weights not found")
        try:
            missing, unexpected = load_model(model, str(file), strict=False)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: cannot read the weights, the file is damaged or truncated ({e})") from e
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"{file}: weights do not fit the config in {CONFIG_FILE} ({e})") from e
        if missing or unexpected:
            raise ValueError(
                f"{file}: weights do not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()
