"""Training checkpoints: one folder per step, written atomically, verified on load, last K kept.

    run/checkpoints/step_00001200/
        model.safetensors   weights (the live model)
        ema.safetensors     EMA weights (when EMA is on)
        trainer.pt          optimizer, LR scheduler, RNG states, step, data position
        manifest.json       SHA-256 of every file above — a checkpoint that does not match is refused

The folder is written under a temporary name and renamed into place, so a crash mid-write leaves
no half checkpoint; older checkpoints are pruned only after a new one is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Checkpointer:
    def __init__(self, directory, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def all(self) -> List[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))

    def latest(self) -> Optional[Path]:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, tensors: Dict[str, Dict[str, torch.Tensor]], state: dict) -> Path:
        """``tensors``: {"model": state_dict, "ema": state_dict, …} saved as safetensors; ``state``:
        everything else (optimizer, scheduler, RNG, positions), saved with torch.save."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f"step_{step:08d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = []
        for name, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
            files.append(f"{name}.safetensors")
        torch.save(state, tmp / "trainer.pt")
        files.append("trainer.pt")
        manifest = {"step": step, "files": {f: _sha256(tmp / f) for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, path) -> tuple:
        """(tensors, state) from a checkpoint folder, after checking every file against the manifest."""
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{manifest_file}: unreadable ({e})") from e
        for name, digest in manifest["files"].items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"{f}: missing from the checkpoint")
            if _sha256(f) != digest:
                raise CheckpointError(f"{f}: corrupt or truncated (SHA-256 does not match {MANIFEST})")
        tensors = {Path(n).stem: load_file(str(path / n)) for n in manifest["files"] if n.endswith(".safetensors")}
        state = torch.load(path / "trainer.pt", weights_only=False)
        return tensors, state
