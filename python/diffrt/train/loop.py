"""The training loop shared by every model kind: AdamW, linear warmup + cosine decay, EMA,
gradient clipping and accumulation, bfloat16 autocast, JSONL metrics, a progress bar, atomic
checkpoints with exact resume, a checkpoint on SIGTERM / Ctrl-C, and torch.distributed DDP
(gloo on the CPU, NCCL on GPUs) when launched with torchrun.

A model kind supplies the model, ``loss_fn(model, batch, generator) -> (loss, metrics)`` and
``make_batches(start) -> iterator`` that yields this rank's batches from global batch ``start`` on
(so a resumed run sees exactly the batches it would have seen).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..images import save_grid
from ..precision import compute_dtype
from .checkpoint import Checkpointer, CheckpointError

LossFn = Callable[[nn.Module, dict, torch.Generator], Tuple[torch.Tensor, Dict[str, float]]]


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # global batch (all ranks, all accumulation micro-batches)
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = 0.999
    autocast: str = "none"  # "none" or "bf16" (CPU and CUDA) or "fp16" (CUDA)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    preview_every: int = 0  # write a PNG grid of samples every N steps (0: never)
    seed: int = 0

    def __post_init__(self):
        if self.autocast not in ("none", "bf16", "fp16"):
            raise ValueError(f"autocast must be 'none', 'bf16' or 'fp16', got {self.autocast!r}")
        for name, least in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0),
                            ("checkpoint_every", 1), ("keep_checkpoints", 1), ("log_every", 1), ("preview_every", 0),
                            ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        for name in ("lr", "weight_decay", "beta1", "beta2", "min_lr_ratio", "grad_clip", "ema_decay"):
            value = getattr(self, name)
            if value is None and name in ("grad_clip", "ema_decay"):
                continue  # off
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        checks = [("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"), ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
                  ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                  ("grad_clip", self.grad_clip is None or self.grad_clip >= 0, ">= 0 (0: no clipping)"),
                  ("ema_decay", self.ema_decay is None or 0 <= self.ema_decay < 1, "in [0, 1) (0: no EMA)")]
        for name, ok, rule in checks:
            if not ok:  # written so that NaN fails too
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """θ_ema ← d·θ_ema + (1 − d)·θ, kept in float32 (as θ_ema + (1 − d)·(θ − θ_ema): a weight that does
    not train, such as a frozen text tower, stays bitwise what it was)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def _rng_state() -> dict:
    """The global RNG states, in types a checkpoint stores exactly (tensors, ints, floats, tuples)."""
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    numpy_state = (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian))
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    random.setstate(state["python"])


class Trainer:
    def __init__(self, model: nn.Module, loss_fn: LossFn, make_batches: Callable[[int], Iterator[dict]],
                 config: TrainConfig, run_dir, *, progress: bool = True,
                 preview: Optional[Callable[[nn.Module], torch.Tensor]] = None):
        """``preview(model) -> images`` (B, 3, H, W) in [−1, 1] is called with the EMA weights loaded
        every ``config.preview_every`` steps and saved as run_dir/samples/step_XXXXXXXX.png."""
        self.config = config
        self.preview = preview
        self.run_dir = Path(run_dir)
        self.loss_fn, self.make_batches, self.progress = loss_fn, make_batches, progress
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if config.batch_size % (self.world * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} must divide into {self.world} ranks × "
                             f"{config.grad_accum} accumulation steps")
        torch.manual_seed(config.seed)
        self.model = model
        self.ddp = nn.parallel.DistributedDataParallel(model) if self.world > 1 else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, config.warmup_steps, config.steps, config.min_lr_ratio))
        self.ema = EMA(model, config.ema_decay) if config.ema_decay else None
        self.generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.step = 0
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=config.keep_checkpoints)
        self.stop_signal: Optional[int] = None  # SIGTERM / SIGINT received by run()
        self._checkpointed_step: Optional[int] = None  # the step whose state is on disk, as saved or resumed

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_contents(self) -> Tuple[Dict[str, Dict[str, torch.Tensor]], dict]:
        """(weights, trainer state) as Checkpointer.save takes them."""
        tensors = {"model": self.model.state_dict()}
        if self.ema is not None:
            tensors["ema"] = self.ema.shadow
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": _rng_state(), "generator": self.generator.get_state(), "config": asdict(self.config)}
        return tensors, state

    def save_checkpoint(self) -> Optional[Path]:
        """Checkpoint the current step; a step already saved (or resumed from) is not written again."""
        if self.rank != 0:
            return None
        existing = self.checkpointer.path(self.step)
        if self._checkpointed_step == self.step and existing is not None:
            return existing
        path = self.checkpointer.save(self.step, *self.checkpoint_contents())
        self._checkpointed_step = self.step
        return path

    def resume(self, path=None) -> int:
        """Load ``path`` (default: the newest checkpoint); returns the step to continue from. The
        metrics log is cut back to that step, so the steps run again are not logged twice."""
        path = Path(path) if path is not None else self.checkpointer.latest()
        if path is None:
            raise CheckpointError(f"{self.checkpointer.directory}: no checkpoint to resume from")
        try:
            tensors, state = self.checkpointer.load(path)
        except CheckpointError as e:
            others = [f"step_{s:08d}" for s in self.checkpointer.intact() if self.checkpointer.path(s) != path]
            hint = f"; intact checkpoints: {', '.join(others)}" if others else "; no other intact checkpoint"
            raise CheckpointError(f"{e}{hint}") from e
        self.model.load_state_dict(tensors["model"])
        if self.ema is not None:
            self.ema.shadow = {k: tensors["ema"][k].float() for k in self.model.state_dict()}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]
        self._checkpointed_step = self.step
        if self.rank == 0:
            self._truncate_metrics(self.step)
        return self.step

    def _truncate_metrics(self, step: int) -> None:
        """Keep the metrics lines of steps <= ``step`` (a killed run logged past its last checkpoint);
        the log is rewritten under a temporary name and renamed into place."""
        log = self.run_dir / "metrics.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                logged = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(logged, dict) and isinstance(logged.get("step"), int) and logged["step"] <= step:
                kept.append(line + "\n")
        tmp = log.with_name(log.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, log)

    def write_preview(self) -> Optional[Path]:
        """Samples from the EMA weights (the live weights without EMA) as a PNG grid."""
        if self.rank != 0 or self.preview is None:
            return None
        live = {k: v.clone() for k, v in self.model.state_dict().items()} if self.ema is not None else None
        try:
            if self.ema is not None:
                self.ema.copy_to(self.model)
            self.model.eval()
            with torch.no_grad():
                images = self.preview(self.model)
        finally:
            if live is not None:
                self.model.load_state_dict(live)
            self.model.train()
        return save_grid(images, self.run_dir / "samples" / f"step_{self.step:08d}.png")

    # -- the loop ------------------------------------------------------------------------------
    def _autocast_dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype of a run, None for none: "bf16" on a CPU without fast bfloat16 arithmetic is
        none (float32), with one warning per run."""
        c = self.config
        if c.autocast == "none":
            return None
        if c.autocast == "fp16":
            return torch.float16
        device = next(self.model.parameters()).device
        dtype = compute_dtype(torch.bfloat16, device, what='TrainConfig(autocast="bf16")', stacklevel=3)
        return dtype if dtype == torch.bfloat16 else None

    def _autocast(self, dtype: Optional[torch.dtype]):
        if dtype is None:
            return nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=dtype)

    def _request_stop(self, signum, frame):
        self.stop_signal = signum

    def run(self, steps: Optional[int] = None) -> dict:
        """Train until ``steps`` (default: config.steps) optimizer steps are done; returns the last metrics."""
        c = self.config
        target = c.steps if steps is None else steps
        net = self.ddp or self.model
        autocast = self._autocast_dtype()
        self.stop_signal = None
        log = None
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            log = (self.run_dir / "metrics.jsonl").open("a")
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        batches = self.make_batches(self.step * c.grad_accum)
        metrics: dict = {}
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not self.progress or self.rank != 0)
        t0, done_since = time.perf_counter(), 0
        try:
            net.train()
            while self.step < target and self.stop_signal is None:
                self.optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for micro in range(c.grad_accum):
                    batch = next(batches)
                    sync = micro == c.grad_accum - 1 or self.ddp is None
                    with (nullcontext() if sync else self.ddp.no_sync()), self._autocast(autocast):
                        loss, metrics = self.loss_fn(net, batch, self.generator)
                    (loss / c.grad_accum).backward()
                    total += loss.item() / c.grad_accum
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip) if c.grad_clip else None
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step += 1
                done_since += 1
                metrics = {"step": self.step, "loss": total, "lr": self.scheduler.get_last_lr()[0], **metrics}
                if norm is not None:
                    metrics["grad_norm"] = float(norm)
                if self.step % c.log_every == 0 or self.step == target:
                    elapsed = time.perf_counter() - t0
                    metrics["it_per_s"] = done_since / elapsed if elapsed > 0 else 0.0
                    t0, done_since = time.perf_counter(), 0
                    if log:
                        log.write(json.dumps(metrics) + "\n")
                        log.flush()
                bar.set_postfix(loss=f"{total:.4f}")
                bar.update(1)
                if self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
                if self.preview is not None and c.preview_every and self.step % c.preview_every == 0:
                    self.write_preview()
            if self.stop_signal is not None:  # SIGTERM / Ctrl-C: keep the work done so far
                self.save_checkpoint()
        finally:
            bar.close()
            for s, h in previous.items():
                signal.signal(s, h)
            if log:
                log.close()
        return metrics
