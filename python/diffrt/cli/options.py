"""Option types and the options several commands share. argparse reports a type's error as
``diffrt CMD: error: argument --name: expected …`` (exit 2) before anything loads."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..models.bundle import PARTS
from ..pipelines.diffedit import MASK_NORMALISATIONS

DEFAULT_OUT = "diffrt-out"
BACKENDS = ("torch", "compile", "openvino")  # --backend: what runs the denoisers
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes any unsigned 64-bit seed
MODEL_HELP = f"model folder ({', '.join(f'{part}/' for part in PARTS)}); default: the shipped weights"


def _option(text: str, kind, expected: str, valid) -> Any:
    """``kind(text)`` if it parses and ``valid`` holds, else an argparse error saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):  # NaN fails every comparison, so range checks refuse it too
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def int_at_least(minimum: int):
    return lambda text: _option(text, int, f"an integer >= {minimum}", lambda v: v >= minimum)


def finite_arg(text: str) -> float:
    return _option(text, float, "a finite number", math.isfinite)


def guidance_arg(text: str) -> float:
    """--guidance: a finite weight >= 0 (1 = the conditional model alone, 0 = the unconditional)."""
    return _option(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def eta_arg(text: str) -> float:
    """--eta: DDIM's η, a finite number >= 0 (0 deterministic, 1 DDPM-like noise)."""
    return _option(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def strength_arg(text: str) -> float:
    """--strength: the fraction of the noise schedule to encode to, in (0, 1]."""
    return _option(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def seed_arg(text: str) -> int:
    return _option(text, int, "an integer in [0, 2**64 - 1]", lambda v: 0 <= v <= MAX_SEED)


def dynamic_threshold_arg(text: str) -> float:
    """--dynamic-threshold: a percentile in (0, 1]."""
    return _option(text, float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def add_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dynamic-threshold", type=dynamic_threshold_arg, default=None, metavar="P",
                   help="Imagen's dynamic thresholding of the predicted x0 at percentile P (e.g. 0.995), for "
                        "guidance of 10 and more; default off: at moderate guidance it desaturates the samples")


def fraction_arg(text: str) -> float:
    """A threshold in [0, 1)."""
    return _option(text, float, "a number in [0, 1)", lambda v: 0.0 <= v < 1.0)


# DiffEdit's mask as the commands estimate it by default (DiffEditPipeline keyword arguments), chosen
# for the shipped models on 64 edits of a tuning seed (777), not the benchmark's: mask IoU with the
# true region 0.41 against 0.17 with the paper's settings (the edit's strength, "mean", 0, 0.5).
DIFFEDIT_MASK = {"mask_strength": 0.2, "mask_normalise": "max", "mask_smooth": 1, "threshold": 0.55}


def add_mask_options(p: argparse.ArgumentParser) -> None:
    """DiffEdit's mask options, defaulting to DIFFEDIT_MASK."""
    m = DIFFEDIT_MASK
    p.add_argument("--mask-strength", type=strength_arg, default=m["mask_strength"],
                   help=f"encoding ratio at which the mask is estimated (default {m['mask_strength']}, chosen for "
                        f"the shipped models; the paper's: the edit's --strength)")
    p.add_argument("--mask-normalise", choices=MASK_NORMALISATIONS, default=m["mask_normalise"],
                   help="max: keep the pixels within --mask-threshold of the strongest response; mean: the paper's, "
                        f"clamp at 3x the mean and keep what lies above the threshold of that (default "
                        f"{m['mask_normalise']})")
    p.add_argument("--mask-smooth", type=int_at_least(0), default=m["mask_smooth"],
                   help=f"box-blur radius of the map before thresholding, in model pixels (default {m['mask_smooth']}; "
                        f"the paper's: 0)")
    p.add_argument("--mask-threshold", type=fraction_arg, default=m["threshold"],
                   help=f"binarise the normalised map above this (default {m['threshold']}; the paper's: 0.5)")


def add_sampling_options(p: argparse.ArgumentParser, *, steps: int = 50, guidance: float = 3.0,
                         out: str = DEFAULT_OUT) -> None:
    """--model, --out, --seed, --steps, --guidance and --quiet of a command that samples images."""
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--out", default=out, help=f"output folder for the PNGs (default: {out})")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed, 0 to 2**64 - 1 (default 0)")
    p.add_argument("--steps", type=int_at_least(1), default=steps, help=f"DDIM steps (default {steps})")
    p.add_argument("--guidance", type=guidance_arg, default=guidance,
                   help=f"classifier-free guidance weight >= 0 (default {guidance})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="what runs the denoisers (the UNets and the prior): torch (eager, with diffrt's kernels; "
                        "the default), compile (torch.compile, minutes of compiling first) or openvino "
                        "(pip install 'diffrt[openvino]'; converted once per input shape and cached on disk)")
