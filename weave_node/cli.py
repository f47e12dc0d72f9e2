"""`weave-node`: the router daemon and its operator commands. Subcommands import what they need lazily."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from weave_node import __version__
from weave_node.core.errors import WeaveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weave-node", description=__doc__)
    parser.add_argument("--version", action="version", version=f"weave-node {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    from weave_node.commands import add_parsers
    from weave_node.lab.cli import add_parser as add_lab

    add_parsers(sub)
    add_lab(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except WeaveError as exc:
        print(f"weave-node: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("weave-node: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
