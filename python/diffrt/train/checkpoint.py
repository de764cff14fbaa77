"""Training checkpoints: one folder per step, written atomically, verified on load, last K kept.

    run/checkpoints/step_00001200/
        model.safetensors    weights (the live model)
        ema.safetensors      EMA weights (when EMA is on)
        trainer.json         optimizer, LR scheduler, RNG states, step, config — plain JSON …
        trainer.safetensors  … whose tensors (Adam moments, RNG states) are stored here
        manifest.json        SHA-256 of every file above — a checkpoint that does not match is refused

Nothing in a checkpoint is a pickle, so loading one cannot run code: the manifest only detects
damage, not tampering (whoever can write the folder can rewrite it too). Checkpoints of the older
format, whose trainer state was a pickle (trainer.pt), are refused for resuming; their weights can
still be exported.

A folder is written under a temporary name (``.tmp``) and renamed into place, so a crash mid-write
leaves no half checkpoint. Replacing a complete checkpoint of the same step first renames it to
``.old``, which still counts as that step's checkpoint until its replacement is in place; older
checkpoints are pruned (renamed away, then deleted) only after a new one is complete.
``abandoned/`` holds checkpoints set aside when a run continued from an earlier step.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as serialize_safetensors

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"
PICKLED_TRAINER_STATE = "trainer.pt"  # the older format: never unpickled
FORMAT = 2

_COMPLETE = re.compile(r"step_(\d+)(\.old)?")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, of a refused format, or could not be written."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync: the data is on disk before the folder's rename makes it visible. Python's own
    file I/O reports a full disk as OSError(ENOSPC), which the safetensors and torch writers do not."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the trainer state as JSON + tensors --------------------------------------------------------
# JSON holds None, bool, int, float (repr round-trips exactly), str, list and string-keyed dicts;
# everything else is tagged: {"$tensor": key in trainer.safetensors}, {"$tuple": [...]},
# {"$dict": [[key, value], ...]} (non-string keys, e.g. the optimizer's parameter ids).

def encode_state(value: Any, tensors: Dict[str, torch.Tensor], path: str = "state") -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        tensors[key] = value.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
        return {"$tensor": key}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode_state(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"$dict": [[encode_state(k, tensors, f"{path}.key{i}"), encode_state(v, tensors, f"{path}.{k}")]
                          for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"{path}: a checkpoint cannot store {type(value).__name__} values")


def decode_state(value: Any, tensors: Dict[str, torch.Tensor], where: str) -> Any:
    """The inverse of encode_state; builds only JSON values, tuples, dicts and stored tensors."""
    if isinstance(value, list):
        return [decode_state(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$tensor":
            if not isinstance(inner, str) or inner not in tensors:
                raise CheckpointError(f"{where}: refers to a tensor {inner!r} that {TRAINER_TENSORS} does not hold")
            return tensors[inner]
        if tag == "$tuple" and isinstance(inner, list):
            return tuple(decode_state(v, tensors, where) for v in inner)
        if tag == "$dict" and isinstance(inner, list) and all(isinstance(p, list) and len(p) == 2 for p in inner):
            pairs = [(decode_state(k, tensors, where), decode_state(v, tensors, where)) for k, v in inner]
            try:
                return dict(pairs)
            except TypeError as e:
                raise CheckpointError(f"{where}: a dictionary key is not hashable ({e})") from e
    if any(k.startswith("$") for k in value):
        raise CheckpointError(f"{where}: malformed entry with keys {sorted(value)}")
    return {k: decode_state(v, tensors, where) for k, v in value.items()}


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def by_step(self) -> Dict[int, Path]:
        """Complete checkpoint folders by step: ``step_N``, or ``step_N.old`` while its replacement
        is not yet in place."""
        found: Dict[int, Path] = {}
        if not self.directory.is_dir():
            return found
        for p in self.directory.iterdir():
            match = _COMPLETE.fullmatch(p.name)
            if match and p.is_dir():
                step = int(match.group(1))
                if not match.group(2) or step not in found:
                    found[step] = p
        return dict(sorted(found.items()))

    def all(self) -> List[Path]:
        """Complete checkpoint folders, oldest first."""
        return list(self.by_step().values())

    def latest(self) -> Optional[Path]:
        found = self.all()
        return found[-1] if found else None

    def path(self, step: int) -> Optional[Path]:
        """The complete checkpoint folder of ``step``, if there is one."""
        return self.by_step().get(step)

    def intact(self) -> List[int]:
        """Steps whose checkpoints pass the manifest check and can be resumed from, oldest first."""
        good = []
        for step, p in self.by_step().items():
            try:
                manifest = self.verify(p)
            except CheckpointError:
                continue
            if TRAINER_STATE in manifest["files"]:
                good.append(step)
        return good

    # -- writing -------------------------------------------------------------------------------
    def save(self, step: int, tensors: Dict[str, Dict[str, torch.Tensor]], state: dict) -> Path:
        """``tensors``: {"model": state_dict, "ema": state_dict, …} saved as safetensors; ``state``:
        everything else (optimizer, scheduler, RNG, positions) — nested dicts, lists and tuples of
        tensors, numbers, strings, bools and None — saved as JSON + safetensors.

        Raises CheckpointError when the folder cannot be written (e.g. the disk is full): the partial
        folder is removed and the complete checkpoints are kept."""
        if "trainer" in tensors:
            raise ValueError("'trainer' is reserved for the trainer state's tensors")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"{self.directory}: cannot create the checkpoint folder ({e})") from e
        final = self.directory / f"step_{step:08d}"
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        for stale in self.directory.glob("step_*.tmp"):  # a killed write or prune; only rank 0 writes here
            shutil.rmtree(stale, ignore_errors=True)
        for replaced in self.directory.glob("step_*.old"):  # a killed replacement, finished but not cleaned up
            if replaced.with_suffix("").is_dir():
                self._remove(replaced)
        try:
            tmp.mkdir()
            digests = {}
            for name, sd in tensors.items():
                data = serialize_safetensors({k: v.detach().contiguous().cpu() for k, v in sd.items()})
                digests[f"{name}.safetensors"] = self._write(tmp / f"{name}.safetensors", data)
            state_tensors: Dict[str, torch.Tensor] = {}
            encoded = json.dumps(encode_state(state, state_tensors)).encode()
            digests[TRAINER_TENSORS] = self._write(tmp / TRAINER_TENSORS, serialize_safetensors(state_tensors))
            digests[TRAINER_STATE] = self._write(tmp / TRAINER_STATE, encoded)
            manifest = {"format": FORMAT, "step": step, "files": digests}
            _write_file(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
            _fsync_dir(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # a partial folder must not fill the disk
            if isinstance(e, OSError):
                raise CheckpointError(self._write_failure(step, e)) from e
            raise
        # Never delete a complete checkpoint before its replacement is in place: move it aside
        # (still found as this step's checkpoint), rename the new one in, then delete the old one.
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        if old.exists():
            self._remove(old)
        # Keep the newest K up to this step; later ones (another run's) are left alone, not pruned
        # in place of the checkpoint just written.
        for superseded in [p for s, p in self.by_step().items() if s <= step][: -self.keep]:
            self._remove(superseded)
        return final

    def set_aside_after(self, step: int) -> List[Path]:
        """Move the checkpoints of steps after ``step`` into ``abandoned/`` (a run continued from
        ``step`` must not resume from them later); returns their new folders."""
        moved = []
        for later, path in self.by_step().items():
            if later > step:
                target = self.directory / "abandoned" / f"step_{later:08d}"
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(path, target)
                moved.append(target)
        return moved

    @staticmethod
    def _write(path: Path, data: bytes) -> str:
        _write_file(path, data)
        return hashlib.sha256(data).hexdigest()

    def _write_failure(self, step: int, e: OSError) -> str:
        kept = ", ".join(str(s) for s in self.by_step()) or "none"
        what = f"no space left in {self.directory}" if e.errno == errno.ENOSPC else f"{self.directory}: {e}"
        return (f"{what}: checkpoint of step {step} not written (its partial folder was removed); "
                f"complete checkpoints kept: steps {kept}")

    def _remove(self, path: Path) -> None:
        """Rename first, so a folder being deleted is never taken for a checkpoint."""
        doomed = path.with_name(f"{path.name}.tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- reading -------------------------------------------------------------------------------
    def verify(self, path) -> dict:
        """The manifest of the checkpoint folder ``path``, after checking every file it lists."""
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete")
        try:
            manifest = json.loads(manifest_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{manifest_file}: unreadable ({e})") from e
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not isinstance(manifest.get("step"), int) or not all(
                isinstance(n, str) and isinstance(d, str) and n == Path(n).name for n, d in files.items()):
            raise CheckpointError(f"{manifest_file}: malformed (expected a step and a files: name → SHA-256 table)")
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"{f}: missing from the checkpoint")
            if _sha256(f) != digest:
                raise CheckpointError(f"{f}: corrupt or truncated (SHA-256 does not match {MANIFEST})")
        return manifest

    def load_weights(self, path) -> Tuple[Dict[str, Dict[str, torch.Tensor]], int]:
        """({"model": …, "ema": …}, step) of a verified checkpoint folder; reads only safetensors,
        so it also serves checkpoints of the older pickled format."""
        path = Path(path)
        manifest = self.verify(path)
        tensors = {}
        for name in manifest["files"]:
            if name.endswith(".safetensors") and name != TRAINER_TENSORS:
                tensors[name[: -len(".safetensors")]] = self._read_tensors(path / name)
        return tensors, manifest["step"]

    def load(self, path) -> tuple:
        """(tensors, state) from a checkpoint folder, after checking every file against the manifest."""
        path = Path(path)
        tensors, _ = self.load_weights(path)
        files = json.loads((path / MANIFEST).read_text())["files"]
        if TRAINER_STATE not in files:
            if PICKLED_TRAINER_STATE in files or (path / PICKLED_TRAINER_STATE).exists():
                raise CheckpointError(
                    f"{path}: an older checkpoint format whose trainer state ({PICKLED_TRAINER_STATE}) is a pickle, "
                    "which can run arbitrary code when loaded, so it is not loaded; its weights can still be "
                    "exported (diffrt export) and a new run started from them ([init] from)")
            raise CheckpointError(f"{path}: no {TRAINER_STATE} listed in {MANIFEST}; the checkpoint is incomplete")
        if TRAINER_TENSORS not in files:
            raise CheckpointError(f"{path}: no {TRAINER_TENSORS} listed in {MANIFEST}; the checkpoint is incomplete")
        stored = self._read_tensors(path / TRAINER_TENSORS)
        where = str(path / TRAINER_STATE)
        try:
            encoded = json.loads((path / TRAINER_STATE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{where}: unreadable ({e})") from e
        state = decode_state(encoded, stored, where)
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: not a table of trainer state")
        return tensors, state

    @staticmethod
    def _read_tensors(file: Path) -> Dict[str, torch.Tensor]:
        try:
            return load_safetensors(file.read_bytes())
        except Exception as e:  # safetensors raises its own error type for a malformed file
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
