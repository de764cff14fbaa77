"""The ``diffrt`` command.

    diffrt info                                   what this build contains
    diffrt train | export | bundle                training and packaging models      (cli/train.py)
    diffrt generate | inpaint | diffedit | imagic | variations | interpolate
                                                  the image commands                 (cli/generate.py)
    diffrt demo                                   every pipeline, and a contact sheet (cli/demo.py)
    diffrt eval editbench | t2i | diffedit | unclip | imagic
                                                  the benchmarks                     (cli/eval.py)

Every command reports bad input the same way (`diffrt.cli.errors`): one line ``diffrt COMMAND:
error: …`` and exit status 2; DIFFRT_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import demo, eval as eval_commands, generate, info, train
from .errors import BAD_INPUT_STATUS, debugging, is_bad_input, one_line

COMMAND_MODULES = (info, train, generate, demo, eval_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffrt", description="diffrt: a compiled diffusion sampling runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in COMMAND_MODULES:
        commands.add_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command. Bad input (a missing or unreadable file, an invalid value) prints one line,
    ``diffrt COMMAND: error: …``, and returns 2, as argparse does for bad options; anything else is a
    bug and raises with its traceback. DIFFRT_DEBUG=1 shows the traceback of bad input too."""
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except Exception as e:
        if debugging() or not is_bad_input(e):
            raise  # a bug (or DIFFRT_DEBUG=1): the traceback is what is needed
        print(f"diffrt {args.command}: error: {one_line(e)}", file=sys.stderr)
        return BAD_INPUT_STATUS
    if isinstance(result, list):  # the image commands and the benchmarks return the files they wrote
        # One write per line: under PYTHONUNBUFFERED (as in many containers) print() writes the text and
        # its newline separately, so the lines of torchrun's ranks, which share stdout, could interleave.
        for path in result:
            sys.stdout.write(f"{path}\n")
        sys.stdout.flush()
        return 0
    return result


__all__ = ["build_parser", "main"]
