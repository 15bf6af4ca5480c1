"""Command-line interface: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys

from vtune._errors import VtuneError


def build_parser() -> argparse.ArgumentParser:
    """Builds the top-level parser with one sub-command per capability."""
    parser = argparse.ArgumentParser(prog="vtune", description=__doc__)
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except VtuneError as exc:
        print(f"vtune: error: {exc}", file=sys.stderr)
        return exc.exit_code
