"""The ``diffrt`` command.

    diffrt info                                   what this build contains
    diffrt train KIND --config run.toml [--resume] [--run-dir DIR] [--steps N] [--stop-at N]
    diffrt export KIND --run-dir RUN --out DIR [--step N] [--live]
    diffrt bundle --out DIR --clip RUN/final [--base …] [--sr …] [--prior …] [--decoder …]
    diffrt generate | inpaint | diffedit | imagic | variations | interpolate  (see --help of each)
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib


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
    from .models.serialization import CONFIG_FILE, SavableModel

    model = kind.model
    if not isinstance(model, SavableModel):
        raise ValueError(f"[init] from: {type(model).__name__} models cannot be warm-started")
    trained = type(model).load_config(folder)
    if trained != model.config:
        raise ValueError(f"[init] from: {folder / CONFIG_FILE} describes another architecture than [model]")
    model.load_state_dict(type(model).from_pretrained(folder).state_dict())


def _train(args) -> int:
    import torch
    import torch.distributed as dist

    from .train import TrainConfig, Trainer
    from .train.kinds import batch_factory, build

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
        print(f"diffrt train: {config_file}: [train] has unknown keys {unknown}", file=sys.stderr)
        return 2
    train_config = TrainConfig(**train_values)
    run_dir = Path(args.run_dir or config.get("run_dir") or Path("runs") / args.kind)
    torch.manual_seed(train_config.seed)  # the initial weights are part of the run's recipe
    kind = build(args.kind, config)
    if config.get("init", {}).get("from") and not args.resume:
        _warm_start(kind, Path(config["init"]["from"]))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    micro = train_config.batch_size // (world * train_config.grad_accum)
    trainer = Trainer(kind.model, kind.objective, batch_factory(config.get("data", {}), micro, kind.masking, rank, world),
                      train_config, run_dir, preview=kind.preview)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(config_file.read_text())
    if args.resume:
        print(f"resuming from step {trainer.resume()}", file=sys.stderr)
    metrics = trainer.run(args.stop_at)
    if trainer.step < train_config.steps and rank == 0:
        trainer.save_checkpoint()  # stopped early (--stop-at, SIGTERM): resume continues from here
        print(f"stopped at step {trainer.step} of {train_config.steps}; continue with --resume", file=sys.stderr)
    elif rank == 0:
        trainer.save_checkpoint()
        if trainer.ema is not None:
            trainer.ema.copy_to(kind.model)
        kind.save(kind.model, run_dir / "final")
        print(f"trained {args.kind} for {trainer.step} steps; final loss {metrics.get('loss', float('nan')):.4f}; "
              f"weights in {run_dir / 'final'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _export(args) -> int:
    """A checkpoint's weights (EMA unless --live) as a model folder, like a finished run's final/."""
    from .train.checkpoint import Checkpointer
    from .train.kinds import build

    run_dir = Path(args.run_dir)
    config = _read_config(Path(args.config) if args.config else run_dir / "config.toml")
    checkpoints = Checkpointer(run_dir / "checkpoints")
    path = checkpoints.directory / f"step_{args.step:08d}" if args.step is not None else checkpoints.latest()
    if path is None or not path.is_dir():
        have = ", ".join(p.name for p in checkpoints.all()) or "none"
        raise FileNotFoundError(f"{path or checkpoints.directory}: no such checkpoint (have: {have})")
    from .train.checkpoint import CheckpointError

    try:
        tensors, state = checkpoints.load(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    kind = build(args.kind, config)
    weights = tensors["model"] if args.live or "ema" not in tensors else tensors["ema"]
    current = kind.model.state_dict()
    kind.model.load_state_dict({k: v.to(current[k].dtype) for k, v in weights.items()})
    kind.save(kind.model, Path(args.out))
    print(f"exported {args.kind} at step {state['step']} ({'live' if args.live else 'EMA'} weights) to {args.out}")
    return 0


def _bundle(args) -> int:
    import torch

    from .bundle import PARTS, pack

    parts = {name: getattr(args, name) for name in PARTS if getattr(args, name)}
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    bundle = pack(parts, args.out, dtype=dtype)
    size = sum(f.stat().st_size for f in bundle.directory.rglob("*") if f.is_file())
    print(f"packed {', '.join(parts)} into {bundle.directory} ({size / 2**20:.1f} MiB, {args.dtype} weights)")
    return 0


def _info(args) -> int:
    from .info import main as info_main

    info_main()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .train.kinds import KINDS

    parser = argparse.ArgumentParser(prog="diffrt", description="diffrt: a compiled diffusion sampling runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what this build contains").set_defaults(run=_info)
    train = sub.add_parser("train", help="train a model kind from a TOML config")
    train.add_argument("kind", choices=KINDS)
    train.add_argument("--config", required=True, help="TOML file with [train], [model], [data], [diffusion], [text]")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the run")
    train.add_argument("--run-dir", help="output folder (default: run_dir from the config, or runs/KIND)")
    train.add_argument("--steps", type=int, help="override [train] steps (the length of the LR schedule)")
    train.add_argument("--stop-at", type=int, help="stop (with a checkpoint) after this many steps; --resume continues")
    train.set_defaults(run=_train)
    export = sub.add_parser("export", help="a training checkpoint's weights as a model folder")
    export.add_argument("kind", choices=KINDS)
    export.add_argument("--run-dir", required=True, help="the training run's folder")
    export.add_argument("--config", help="the run's TOML config (default: RUN_DIR/config.toml)")
    export.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
    export.add_argument("--live", action="store_true", help="the live weights instead of the EMA weights")
    export.add_argument("--out", required=True, help="the model folder to write")
    export.set_defaults(run=_export)
    pack = sub.add_parser("bundle", help="assemble trained models (run/final folders) into a model folder")
    pack.add_argument("--out", required=True, help="the model folder to write (its parts are replaced)")
    for name in ("clip", "base", "sr", "prior", "decoder"):
        pack.add_argument(f"--{name}", metavar="DIR", help=f"the trained {name} (a final/ folder)")
    pack.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                      help="storage type of the weights (default: float16; models load them as float32)")
    pack.set_defaults(run=_bundle)
    from .commands import add_commands

    add_commands(sub)
    from .eval import add_eval_command; add_eval_command(sub)  # diffrt eval editbench
    args = parser.parse_args(argv)
    try:
        result = args.run(args)
        if isinstance(result, list):  # the image commands return the files they wrote
            for path in result:
                print(path)
            return 0
        return result
    except (ValueError, FileNotFoundError) as e:
        print(f"diffrt {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
