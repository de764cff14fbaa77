"""torch data sets over the procedural world: map-style and a sharded, resumable stream.

Sample i of seed s is a pure function of (s, i): the scene from generator [s, i, 0], the mask from
generator [s, i, 1]. Sharding and resuming are therefore exact: a shard only decides which indices
it renders.
"""

from __future__ import annotations

import math
import signal
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .masking import MaskingStrategy, default_masking
from .world import (SHAPES, SIZES, VARIED_ATTRIBUTES, check_int, check_resolution, check_varied_attributes, render,
                    scene_at, vary)


class _SampleMaker:
    def __init__(self, resolution: int, seed: int, masking: Optional[MaskingStrategy], max_objects: int,
                 p_glyph: float, antialias: bool, minimal_pairs: bool = False,
                 pair_attributes: Sequence[str] = VARIED_ATTRIBUTES, shapes: Sequence[str] = SHAPES,
                 sizes: Sequence[str] = SIZES):
        self.resolution = check_resolution(resolution)
        self.seed = check_int("seed", seed, 0)
        if masking is not None and not callable(masking):
            raise TypeError(f"masking must be a masking strategy (called as masking(scene, rng)), got {masking!r}")
        self.masking = default_masking() if masking is None else masking
        self.scene_kwargs = {"max_objects": max_objects, "p_glyph": p_glyph,
                             "shapes": tuple(shapes), "sizes": tuple(sizes)}
        scene_at(self.seed, 0, **self.scene_kwargs)  # validates the scene options now, not in a worker
        self.antialias = antialias
        if not isinstance(minimal_pairs, bool):
            raise TypeError(f"minimal_pairs must be True or False, got {minimal_pairs!r}")
        self.minimal_pairs = minimal_pairs
        self.pair_attributes = check_varied_attributes("pair_attributes", pair_attributes)

    def scene(self, index: int):
        """Sample ``index``'s scene; with minimal pairs, an odd index is its even neighbour's scene
        with one object attribute changed (`world.vary`), so a contrastive batch holds hard negatives."""
        if self.minimal_pairs and index % 2:
            scene, rng = scene_at(self.seed, index - 1, **self.scene_kwargs), np.random.default_rng([self.seed, index, 2])
            try:
                return vary(scene, rng, self.pair_attributes)[0]
            except ValueError:  # none of the chosen attributes can change in this scene: any that can
                return vary(scene, rng)[0]
        return scene_at(self.seed, index, **self.scene_kwargs)

    def __call__(self, index: int) -> Dict[str, Any]:
        scene = render(self.scene(index), self.resolution, antialias=self.antialias)
        masked = self.masking(scene, np.random.default_rng([self.seed, index, 1]))
        target = masked.target if masked.target is not None else 0
        described = scene.objects[target]
        n = self.resolution
        return {
            "index": index,
            "image": torch.from_numpy(scene.image),
            "mask": torch.from_numpy(masked.mask),
            "prompt": masked.prompt,
            "masking": masked.kind,
            "target": masked.target if masked.target is not None else -1,
            "captions": {"simple": described.caption_simple, "rich": described.caption_rich,
                         "full": scene.caption_full},
            "boxes": torch.tensor([o.box for o in scene.objects], dtype=torch.int64).reshape(-1, 4),
            "object_masks": torch.from_numpy(np.stack([o.mask for o in scene.objects])[:, None]
                                             if scene.objects else np.zeros((0, 1, n, n), dtype=bool)),
            "labels": [o.spec.labels() for o in scene.objects],
            "background": {"kind": scene.spec.background.kind, "colours": list(scene.spec.background.colours)},
        }


class ProceduralDataset(Dataset):
    """Map-style: index → sample dict.

    Keys: index, image (3, H, W) float32 in [-1, 1], mask (1, H, W) float32 (1 = repaint),
    prompt, masking ('object' / 'random' / 'full'), target (masked object, −1 if none),
    captions {'simple', 'rich', 'full'} (simple/rich of the target, or of the first object),
    boxes (N, 4) int64 (x0, y0, x1, y1, x1/y1 exclusive), object_masks (N, 1, H, W) bool,
    labels (N attribute dicts for evaluation), background {'kind', 'colours'}.
    """

    def __init__(self, resolution: int = 64, *, length: int = 100_000, seed: int = 0,
                 masking: Optional[MaskingStrategy] = None, max_objects: int = 2, p_glyph: float = 0.3,
                 antialias: bool = True, minimal_pairs: bool = False,
                 pair_attributes: Sequence[str] = VARIED_ATTRIBUTES, shapes: Sequence[str] = SHAPES,
                 sizes: Sequence[str] = SIZES):
        self.length = check_int("length", length, 1)
        self._make = _SampleMaker(resolution, seed, masking, max_objects, p_glyph, antialias, minimal_pairs,
                                  pair_attributes, shapes, sizes)

    def __len__(self) -> int:
        return self.length

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return index

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self._make(self._index(index))

    def scene(self, index: int):
        """Sample ``index``'s scene description (`world.SceneSpec`), which its image renders."""
        return self._make.scene(self._index(index))


class ProceduralStream(IterableDataset):
    """Samples start, start+1, … (up to `stop`, or forever), sharded across data-loader workers and
    distributed ranks without repeats or gaps.

    Global step j (one batch on every rank) takes indices start + (j·world_size + rank)·batch_size
    + [0, batch_size); a data loader with W workers fetches step j from worker j mod W, so each
    worker renders every W-th of its rank's steps. Pass the loader's batch_size: then after n steps
    on every rank the samples consumed are exactly [start, start + n·world_size·batch_size), and
    `resume_start(n)` is where to restart for an exact resume.
    """

    def __init__(self, resolution: int = 64, *, seed: int = 0, start: int = 0, stop: Optional[int] = None,
                 batch_size: int = 1, rank: Optional[int] = None, world_size: Optional[int] = None,
                 masking: Optional[MaskingStrategy] = None, max_objects: int = 2, p_glyph: float = 0.3,
                 antialias: bool = True, minimal_pairs: bool = False,
                 pair_attributes: Sequence[str] = VARIED_ATTRIBUTES, shapes: Sequence[str] = SHAPES,
                 sizes: Sequence[str] = SIZES):
        self.start = check_int("start", start, 0)
        self.stop = None if stop is None else check_int("stop", stop, self.start)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if (rank is None) != (world_size is None):
            raise ValueError("rank and world_size must be given together (or both left to torch.distributed)")
        if rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world_size = torch.distributed.get_world_size() if distributed else 1
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0, self.world_size - 1)
        self._make = _SampleMaker(resolution, seed, masking, max_objects, p_glyph, antialias, minimal_pairs,
                                  pair_attributes, shapes, sizes)
        if minimal_pairs and (self.batch_size % 2 or self.start % 2):
            raise ValueError(f"minimal_pairs needs an even batch_size and start (a pair shares its batch), got "
                             f"batch_size={self.batch_size}, start={self.start}")

    def resume_start(self, steps: int) -> int:
        """The `start` that continues exactly after `steps` batches were consumed on every rank."""
        return self.start + check_int("steps", steps, 0) * self.world_size * self.batch_size

    def shard_indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """The indices one data-loader worker of this rank renders, in order."""
        step = worker
        while True:
            first = self.start + (step * self.world_size + self.rank) * self.batch_size
            for index in range(first, first + self.batch_size):
                if self.stop is not None and index >= self.stop:
                    return
                yield index
            step += num_workers

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in self.shard_indices(worker, num_workers):
            yield self._make(index)

    def __len__(self) -> int:
        """Samples this rank yields (all its workers together); only for a finite stream."""
        if self.stop is None:
            raise TypeError("an endless ProceduralStream (stop=None) has no length")
        total, per_step = self.stop - self.start, self.world_size * self.batch_size
        full_steps, rest = divmod(total, per_step)
        mine = min(max(rest - self.rank * self.batch_size, 0), self.batch_size)
        return full_steps * self.batch_size + mine


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn`` for training: SIGTERM and SIGINT reach the whole process group
    (``kill -TERM -PGID``, a scheduler's cancel, Ctrl-C), and the trainer answers them by finishing
    its step and checkpointing — which needs its workers alive, so they ignore both. A worker still
    exits when the loader shuts down or its parent process dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def collate(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack image, mask, index and target; keep prompts, captions, boxes, object masks and labels as lists
    (their lengths differ from sample to sample)."""
    if not batch:
        raise ValueError("batch must hold at least one sample")
    out: Dict[str, Any] = {
        "image": torch.stack([s["image"] for s in batch]),
        "mask": torch.stack([s["mask"] for s in batch]),
        "index": torch.tensor([s["index"] for s in batch], dtype=torch.int64),
        "target": torch.tensor([s["target"] for s in batch], dtype=torch.int64),
    }
    for key in ("prompt", "masking", "captions", "boxes", "object_masks", "labels", "background"):
        out[key] = [s[key] for s in batch]
    return out


def steps_per_epoch(length: int, batch_size: int, world_size: int = 1) -> int:
    """Global steps to see `length` samples once (the last one may be partial)."""
    return math.ceil(check_int("length", length, 1) / (check_int("batch_size", batch_size, 1)
                                                        * check_int("world_size", world_size, 1)))
