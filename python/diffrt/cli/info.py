"""``diffrt info``: what this build contains (the report of ``python -m diffrt.info``)."""

from __future__ import annotations

from .. import info as build_info


def info(args) -> int:
    build_info.main()
    return 0


def add_commands(sub) -> None:
    sub.add_parser("info", help="what this build contains").set_defaults(run=info)
