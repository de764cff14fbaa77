"""Every diffrt model saves as a folder: ``config.json`` (its dataclass config and type) and
``model.safetensors``. Loading checks each file and names the file and what is wrong: every config
field present with the right type and range, every weight floating-point and finite."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Type, TypeVar, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

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
        """The config saved in ``directory``: every field must be there (a folder never takes its
        architecture from the defaults: a default head_dim can fit the weights and still be wrong)."""
        file = Path(directory) / CONFIG_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: model config not found")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{file}: not UTF-8 text ({e})") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{file}: must hold a JSON object of config fields, got a {type(data).__name__}")
        model_type = data.pop("model_type", None)
        if model_type != cls.__name__:
            raise ValueError(f"{file}: holds a {model_type!r} config, not a {cls.__name__}")
        fields = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{file}: unknown {cls.__name__} config keys {unknown}")
        missing = sorted(fields - set(data))
        if missing:
            raise ValueError(f"{file}: missing {cls.__name__} config fields {missing} "
                             "(a saved model states its whole architecture)")
        try:
            return cls.config_class(**data)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e

    @classmethod
    def from_pretrained(cls: Type[M], directory: Union[str, Path], *, dtype: torch.dtype = None) -> M:
        model = cls(cls.load_config(directory))
        file = Path(directory) / WEIGHTS_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: model weights not found")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: cannot read the weights, the file is damaged or truncated ({e})") from e
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():  # load_state_dict would cast integers silently
                raise ValueError(f"{file}: tensor {name!r} is {tensor.dtype}, not floating-point; the file is "
                                 "damaged or not a diffrt model")
            bad = int((~torch.isfinite(tensor.float())).sum())
            if bad:  # NaN weights sample NaN images, which save as black
                raise ValueError(f"{file}: tensor {name!r} has {bad} non-finite value(s) (NaN or ±inf); "
                                 "the weights are damaged")
        try:
            missing, unexpected = model.load_state_dict(tensors, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"{file}: weights do not fit the config in {CONFIG_FILE} ({e})") from e
        if missing or unexpected:
            raise ValueError(
                f"{file}: weights do not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()


_HINTS: Dict[type, Dict[str, Any]] = {}


def _describe(hint) -> str:
    if hint is int:
        return "an int"
    if hint is bool:
        return "a bool (true/false)"
    if hint is str:
        return "a str"
    if hint is float:
        return "a number"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return "a list of " + {int: "ints", float: "numbers", str: "strs"}.get(args[0], str(args[0]))
    if typing.get_origin(hint) is Union and type(None) in args:
        return _describe(next(a for a in args if a is not type(None))) + " or null"
    return str(hint)


def _fits(value, hint) -> bool:
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:  # Tuple[X, ...]
        return isinstance(value, (tuple, list)) and all(_fits(v, args[0]) for v in value)
    if typing.get_origin(hint) is Union:
        return any(value is None if a is type(None) else _fits(value, a) for a in args)
    return True


def check_config(config, minimums: Mapping[str, int], *, label: Optional[str] = None) -> List[str]:
    """Type-check every field of a dataclass config against its annotation (JSON and TOML give loose
    types: a float, a string or null where an int belongs), store lists as tuples, and return the
    range problems of the int fields in ``minimums`` (None passes for optional fields). A type error
    raises, its message starting with ``label`` (default: "invalid <class name>:")."""
    cls = type(config)
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    wrong = []
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), _HINTS[cls][field.name]
        if not _fits(value, hint):
            wrong.append(f"{field.name} must be {_describe(hint)}, got {value!r}")
        elif isinstance(value, list):
            object.__setattr__(config, field.name, tuple(value))  # frozen dataclass: hashable, comparable
    if wrong:
        raise ValueError(f"{label or f'invalid {cls.__name__}:'} " + "; ".join(wrong))
    problems = []
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if isinstance(value, tuple):
            if any(v < minimum for v in value):
                problems.append(f"{name} must be >= {minimum} in every entry, got {value}")
        elif value is not None and value < minimum:
            problems.append(f"{name} must be >= {minimum}, got {value}")
    return problems
