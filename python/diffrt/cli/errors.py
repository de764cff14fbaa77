"""The ``diffrt`` command's one error policy: bad input (a missing or unreadable file, an invalid
value, a damaged model folder, a full disk) is reported as one line, ``diffrt COMMAND: error: …``,
with exit status 2, as argparse does for bad options; anything else is a bug and keeps its
traceback. DIFFRT_DEBUG=1 shows the traceback of bad input too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from PIL import Image
from safetensors import SafetensorError

from ..train import CheckpointError

BAD_INPUT_STATUS = 2  # argparse's status for bad options


class CommandError(ValueError):
    """A problem with the user's input, reported as one line."""


def debugging() -> bool:
    """DIFFRT_DEBUG set (and not 0): bad input shows its traceback as well."""
    return os.environ.get("DIFFRT_DEBUG", "0") not in ("", "0")


def is_bad_input(e: Exception) -> bool:
    """Failures that mean bad input or environment, reported as one line: invalid values and files
    (ValueError, which includes CommandError and JSON, TOML and Unicode errors), file system errors
    (OSError, which includes PIL's unreadable images), damaged safetensors files, images over PIL's
    size limit and unusable training checkpoints. Anything else (TypeError, KeyError, RuntimeError,
    …) is a bug and keeps its traceback."""
    return isinstance(e, (ValueError, OSError, SafetensorError, Image.DecompressionBombError, CheckpointError))


def one_line(e: Exception) -> str:
    """The message of bad input, on one line: a full disk names its folder, a file system error its file."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename:
        where = Path(e.filename) if Path(e.filename).is_dir() else Path(e.filename).parent
        return f"no space left in {where} ({e.strerror})"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__
