"""Training and packaging models: ``diffrt train`` (a model kind from a TOML config), ``diffrt export``
(a checkpoint's weights as a model folder) and ``diffrt bundle`` (trained models into one model folder).

    diffrt train KIND --config run.toml [--resume | --resume-from STEP] [--run-dir DIR] [--steps N] [--stop-at N]
    diffrt export KIND --run-dir RUN --out DIR [--step N] [--live]
    diffrt bundle --out DIR --clip RUN/final [--base …] [--sr …] [--prior …] [--decoder …]
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist

from ..models.bundle import PARTS, pack
from ..models.serialization import CONFIG_FILE, SavableModel
from ..train import Checkpointer, CheckpointError, TrainConfig, Trainer
from ..train.kinds import KINDS, batch_factory, build

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

STOPPED_BY_SIGNAL = 128  # exit status 128 + N: stopped by signal N (143: SIGTERM, 130: Ctrl-C), checkpoint written
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _read_config(config_file: Path) -> dict:
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no such config file")
    try:
        return tomllib.loads(config_file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{config_file}: not valid TOML ({e})") from e


def _warm_start(kind, folder: Path) -> None:
    """[init] from = a trained model folder (e.g. a shipped part): start from its weights, with a fresh
    optimizer and LR schedule; the architecture in [model] must match the folder's."""
    model = getattr(kind.model, "clip", kind.model)  # a training wrapper (CLIPWithAttributeHead) starts its CLIP
    if not isinstance(model, SavableModel):
        raise ValueError(f"[init] from: {type(model).__name__} models cannot be warm-started")
    trained = type(model).load_config(folder)
    if trained != model.config:
        raise ValueError(f"[init] from: {folder / CONFIG_FILE} describes another architecture than [model]")
    model.load_state_dict(type(model).from_pretrained(folder).state_dict())


def _prepare_run_dir(run_dir: Path, source: str) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{source} {run_dir}: exists and is not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{source} {run_dir}: cannot create the folder ({e.strerror})") from e


def _resume_hint(checkpointer) -> str:
    intact = checkpointer.intact()
    if not intact:
        return f"; no intact checkpoint in {checkpointer.directory}: start again without --resume"
    steps = ", ".join(str(s) for s in intact)
    return f"; intact checkpoints at steps {steps}: continue from one with --resume-from STEP (e.g. {intact[-1]})"


def train(args) -> int:
    """Exit status: 0 trained (or stopped at --stop-at), 2 a clear error (bad config or option, no or
    corrupt checkpoint to resume, no space left: reported by main()), STOPPED_BY_SIGNAL + N after
    signal N's checkpoint."""
    for option, value, least in (("--steps", args.steps, 1), ("--stop-at", args.stop_at, 0),
                                 ("--resume-from", args.resume_from, 0)):
        if value is not None and value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}")
    config_file = Path(args.config)
    config = _read_config(config_file)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")  # launched by torchrun
    train_values = dict(config.get("train", {}))
    if args.steps is not None:
        train_values["steps"] = args.steps
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train_values) - known)
    if unknown:
        raise ValueError(f"{config_file}: [train] has unknown keys {unknown}")
    try:
        train_config = TrainConfig(**train_values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_file}: [train] {e}") from e
    if args.stop_at is not None and args.stop_at > train_config.steps:
        raise ValueError(f"--stop-at {args.stop_at} is past the run's end ([train] steps = {train_config.steps})")
    run_dir = Path(args.run_dir or config.get("run_dir") or Path("runs") / args.kind)
    source = "--run-dir" if args.run_dir else "run_dir" if config.get("run_dir") else "run folder"
    resuming = args.resume or args.resume_from is not None
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if rank == 0:
        _prepare_run_dir(run_dir, source)
    checkpointer = Checkpointer(run_dir / "checkpoints")
    resume_from = None
    if resuming:  # found before the model is built: a run that cannot resume fails at once
        resume_from = checkpointer.latest() if args.resume_from is None else checkpointer.path(args.resume_from)
        if resume_from is None:
            what = "no checkpoint" if args.resume_from is None else f"no checkpoint of step {args.resume_from}"
            raise CheckpointError(f"{checkpointer.directory}: {what} to resume from{_resume_hint(checkpointer)}")
        resume_step = args.resume_from if args.resume_from is not None else max(checkpointer.by_step())
        if args.stop_at is not None and args.stop_at < resume_step:
            raise ValueError(f"--stop-at {args.stop_at} is before the checkpoint's step {resume_step}")
    try:
        torch.manual_seed(train_config.seed)  # the initial weights are part of the run's recipe
        kind = build(args.kind, config)
        if config.get("init", {}).get("from") and not resuming:
            _warm_start(kind, Path(config["init"]["from"]))
        micro = train_config.batch_size // (world * train_config.grad_accum)
        batches = batch_factory(config.get("data", {}), micro, kind.masking, rank, world)
        trainer = Trainer(kind.model, kind.objective, batches, train_config, run_dir, preview=kind.preview)
        if rank == 0:
            (run_dir / "config.toml").write_text(config_file.read_text())
        if resuming:
            try:
                step = trainer.resume(resume_from)
            except CheckpointError as e:
                raise CheckpointError(f"{e}{_resume_hint(checkpointer)}") from e
            print(f"resuming from step {step}", file=sys.stderr)
            if rank == 0:
                for moved in checkpointer.set_aside_after(step):
                    print(f"set aside {moved} (a later step of the run continued from step {step})", file=sys.stderr)
        metrics = trainer.run(args.stop_at)
        interrupted = trainer.stop_signal is not None and trainer.step < train_config.steps
        if trainer.step < train_config.steps and rank == 0:
            trainer.save_checkpoint()  # stopped early (--stop-at, a signal): resume continues from here
            why = f"{signal.Signals(trainer.stop_signal).name} received" if interrupted else "stopped"
            print(f"{why}: checkpoint at step {trainer.step} of {train_config.steps}; continue with --resume",
                  file=sys.stderr)
        elif rank == 0:
            trainer.save_checkpoint()  # no second write when the loop's last step already saved it
            if trainer.ema is not None:
                trainer.ema.copy_to(kind.model)
            kind.save(kind.model, run_dir / "final")
            print(f"trained {args.kind} for {trainer.step} steps; final loss {metrics.get('loss', float('nan')):.4f}; "
                  f"weights in {run_dir / 'final'}")
        if dist.is_initialized():
            dist.destroy_process_group()
        return STOPPED_BY_SIGNAL + trainer.stop_signal if interrupted else 0
    except OSError as e:
        if e.errno == errno.ENOSPC and not e.filename:
            e.filename = str(run_dir)  # a write into the run folder (metrics, samples, final) found the disk full
        raise


def export(args) -> int:
    """A checkpoint's weights (EMA unless --live) as a model folder, like a finished run's final/.
    Only the checkpoint's safetensors are read (never its trainer state)."""
    if args.step is not None and args.step < 0:
        raise ValueError(f"--step must be >= 0, got {args.step}")
    run_dir = Path(args.run_dir)
    config = _read_config(Path(args.config) if args.config else run_dir / "config.toml")
    checkpoints = Checkpointer(run_dir / "checkpoints")
    path = checkpoints.path(args.step) if args.step is not None else checkpoints.latest()
    if path is None:
        have = ", ".join(p.name for p in checkpoints.all()) or "none"
        wanted = checkpoints.directory / f"step_{args.step:08d}" if args.step is not None else checkpoints.directory
        raise FileNotFoundError(f"{wanted}: no such checkpoint (have: {have})")
    try:
        tensors, step = checkpoints.load_weights(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    kind = build(args.kind, config)
    weights = tensors["model"] if args.live or "ema" not in tensors else tensors["ema"]
    current = kind.model.state_dict()
    kind.model.load_state_dict({k: v.to(current[k].dtype) for k, v in weights.items()})
    kind.save(kind.model, Path(args.out))
    print(f"exported {args.kind} at step {step} ({'live' if args.live else 'EMA'} weights) to {args.out}")
    return 0


def pack_bundle(args) -> int:
    parts = {name: getattr(args, name) for name in PARTS if getattr(args, name)}
    dtype = STORAGE_DTYPES[args.dtype]
    bundle = pack(parts, args.out, dtype=dtype)
    size = sum(f.stat().st_size for f in bundle.directory.rglob("*") if f.is_file())
    print(f"packed {', '.join(parts)} into {bundle.directory} ({size / 2**20:.1f} MiB, {args.dtype} weights)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model kind from a TOML config",
                       epilog="exit status: 0 trained (or stopped at --stop-at); 2 bad config or option, no or "
                              "corrupt checkpoint to resume, or no space left; 128+N stopped by signal N after "
                              "writing a checkpoint (143: SIGTERM, 130: Ctrl-C) — continue with --resume")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--config", required=True, help="TOML file with [train], [model], [data], [diffusion], [text]")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    resume.add_argument("--resume-from", type=int, metavar="STEP",
                        help="continue from the checkpoint of step STEP (e.g. an earlier intact one when the newest "
                             "is corrupt); checkpoints of later steps are moved to checkpoints/abandoned/")
    p.add_argument("--run-dir", help="output folder (default: run_dir from the config, or runs/KIND)")
    p.add_argument("--steps", type=int, help="override [train] steps (the length of the LR schedule)")
    p.add_argument("--stop-at", type=int, metavar="N",
                   help="stop (with a checkpoint) after N steps (0 <= N <= [train] steps); --resume continues")
    p.set_defaults(run=train)
    p = sub.add_parser("export", help="a training checkpoint's weights as a model folder")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--run-dir", required=True, help="the training run's folder")
    p.add_argument("--config", help="the run's TOML config (default: RUN_DIR/config.toml)")
    p.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
    p.add_argument("--live", action="store_true", help="the live weights instead of the EMA weights")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.set_defaults(run=export)
    p = sub.add_parser("bundle", help="assemble trained models (run/final folders) into a model folder")
    p.add_argument("--out", required=True, help="the model folder to write (its parts are replaced)")
    for name in PARTS:
        p.add_argument(f"--{name}", metavar="DIR", help=f"the trained {name} (a final/ folder)")
    p.add_argument("--dtype", choices=tuple(STORAGE_DTYPES), default="float16",
                   help="storage type of the weights (default: float16; models load them as float32)")
    p.set_defaults(run=pack_bundle)
