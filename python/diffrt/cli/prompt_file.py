"""``diffrt generate --prompts FILE``: many prompts, any number of processes, resumable.

Image k of prompt p is written once, as OUT/ppppp_kkk.png (``{p:05d}_{k:03d}``; p counts the
file's prompts from 0, k the images of a prompt), and its noise comes from its own generator,
seeded with :func:`image_seed` (--seed, p, k): the images do not depend on the number of processes
nor on --batch-size. Under torchrun (WORLD_SIZE > 1) rank r samples the images i (in file order,
``i = p · num_images + k``) with i mod WORLD_SIZE = r. Every PNG is written to ``NAME.partial``
and renamed into place, so an image file is always complete, and an image whose file exists is
skipped: a stopped run continues when the same command is run again. OUT/prompts.jsonl records
each image's file, prompt, indices, line and seed with the settings that made it; a run whose
images would differ from those already in OUT under the same names is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..images import to_pil
from .errors import CommandError

MANIFEST = "prompts.jsonl"
PARTIAL = ".partial"  # a PNG being written; renamed to its name when complete
DEFAULT_BATCH_SIZE = 8
# the settings an image depends on, recorded with it (--batch-size and the process count are not)
SETTINGS = ("seed", "steps", "guidance", "dynamic_threshold", "model")
MAKES_THE_IMAGE = ("prompt", "image_seed", *SETTINGS)  # not its line: comments may come and go


@dataclass(frozen=True)
class Prompt:
    index: int  # among the file's prompts, from 0
    line: int  # in the file, from 1
    text: str


@dataclass(frozen=True)
class Item:
    """One image to sample: image ``image`` of ``prompt``, with its generator's seed."""
    prompt: Prompt
    image: int
    seed: int

    @property
    def file(self) -> str:
        return f"{self.prompt.index:05d}_{self.image:03d}.png"


def read_prompts(path: str) -> List[Prompt]:
    """One prompt a line, UTF-8 (a BOM is allowed); blank lines and lines starting with ``#`` (after
    leading spaces) are skipped; each prompt is stripped of surrounding white space. A ``#`` inside
    a prompt is part of it."""
    file = Path(path)
    if not file.exists():
        raise CommandError(f"--prompts {file}: no such file")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CommandError(f"--prompts {file}: cannot read it ({e.strerror or e})") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise CommandError(f"--prompts {file}: line {line} is not UTF-8 (byte 0x{data[e.start]:02x})") from e
    prompts = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: \f or \u2028 is no line end here
        prompt = line.strip()
        if prompt and not prompt.startswith("#"):
            prompts.append(Prompt(len(prompts), number, prompt))
    if not prompts:
        raise CommandError(f"--prompts {file}: no prompts (every line is blank or a # comment)")
    return prompts


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index``'s generator: 64 bits of the
    SHA-256 of the three numbers, so neighbouring images get unrelated noise and every process
    computes the same seed. ``diffrt generate --prompt P --num-images 1 --seed S`` with this seed
    draws the same noise (one image from one generator)."""
    digest = hashlib.sha256(f"diffrt generate {seed} {prompt_index} {image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan(prompts: List[Prompt], num_images: int, seed: int) -> List[Item]:
    """Every image of the run, in file order (prompt-major)."""
    return [Item(p, k, image_seed(seed, p.index, k)) for p in prompts for k in range(num_images)]


def settings_of(args) -> dict:
    model = str(Path(args.model).resolve()) if args.model else None  # None: the shipped weights
    return {"seed": args.seed, "steps": args.steps, "guidance": args.guidance,
            "dynamic_threshold": args.dynamic_threshold, "model": model}


def manifest_records(items: List[Item], settings: dict) -> List[dict]:
    return [{"file": it.file, "prompt": it.prompt.text, "prompt_index": it.prompt.index, "image_index": it.image,
             "line": it.prompt.line, "image_seed": it.seed, **settings} for it in items]


def _read_manifest(path: Path) -> Dict[str, dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as e:
        raise CommandError(f"{path}: unreadable ({e}); move it away to start this folder afresh") from e
    if not all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in records):
        raise CommandError(f"{path}: not a diffrt generate manifest; use another --out")
    return {r["file"]: r for r in records}


def check_resumable(out: Path, records: List[dict]) -> None:
    """Refuse to resume into a folder whose images came from another prompt or other settings: the
    image files of the same names would be skipped as done. Only images still in the folder count;
    a prompt that moved to another line (comments or blank lines added) is the same prompt."""
    path = out / MANIFEST
    if not path.exists():
        return
    before = _read_manifest(path)
    for record in records:
        old = before.get(record["file"])
        changed = [key for key in MAKES_THE_IMAGE if old is not None and old.get(key) != record[key]]
        if not changed or not (out / record["file"]).exists():
            continue
        what = ", ".join(f"{key} {old.get(key)!r} → {record[key]!r}" for key in changed)
        raise CommandError(f"--out {out}: {record['file']} was made by another run ({what}); use another --out "
                           f"or delete the images to make them again")


def write_manifest(out: Path, records: List[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    partial = out / (MANIFEST + PARTIAL)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out / MANIFEST)


def write_png(image, path: Path) -> None:
    """A PIL image as a complete PNG at ``path`` or none: written to PATH.partial, flushed to disk,
    then renamed (atomic), so a stopped run never leaves a partial file under the image's name. A
    PATH.partial left by a stopped run is overwritten."""
    partial = path.with_name(path.name + PARTIAL)
    try:
        with open(partial, "wb") as f:
            image.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError as e:
        if e.errno == errno.ENOSPC and not e.filename:
            e.filename = str(partial)
        raise


def process_group() -> Tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group): under torchrun (WORLD_SIZE > 1)
    a gloo group, whose only use is the barrier before the processes leave."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def generate_from_file(args, prompts: List[Prompt], out: Path, pipe) -> List[Path]:
    """The images of this process that are not in ``out`` yet, sampled by ``pipe`` (an
    ImagenEditorPipeline) in batches of --batch-size; returns the files written."""
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    items = plan(prompts, args.num_images, args.seed)
    records = manifest_records(items, settings_of(args))
    check_resumable(out, records)
    # every process has read the manifest before the group forms, so before rank 0 replaces it
    rank, world, started = process_group()
    written: List[Path] = []
    completed = False
    try:
        if rank == 0:
            write_manifest(out, records)
        mine = items[rank::world]
        todo = [it for it in mine if not (out / it.file).exists()]
        label = f"diffrt generate (rank {rank}/{world})" if world > 1 else "diffrt generate"
        # one bar per process, on its own line (position = rank)
        with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=label, unit="image", position=rank,
                  disable=args.quiet or not todo) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                written += _sample_batch(pipe, batch, args, out)
                bar.update(len(batch))
        print(f"{label}: wrote {len(written)} images; {len(mine) - len(todo)} were already in {out}", file=sys.stderr)
        completed = True
    finally:
        if started:
            if completed:  # a failed process leaves at once; torchrun then stops the others
                dist.barrier()
            dist.destroy_process_group()
    return written


def _sample_batch(pipe, batch: List[Item], args, out: Path) -> List[Path]:
    generators = [torch.Generator().manual_seed(it.seed) for it in batch]
    result = pipe([it.prompt.text for it in batch], num_images_per_prompt=1, guidance=args.guidance,
                  dynamic_threshold=args.dynamic_threshold, composite=False, generator=generators,
                  output_type="pt", progress=False)
    images = result.images
    bad = [it.file for it, im in zip(batch, images) if not torch.isfinite(im).all()]
    if bad:  # to_pil would save NaN as black
        raise CommandError(f"sampling produced non-finite pixel values (NaN or ±inf) for {', '.join(bad)}; "
                           f"not written to {out}")
    paths = []
    for it, im in zip(batch, to_pil(images)):
        write_png(im, out / it.file)
        paths.append(out / it.file)
    return paths
