"""The ``lbcore`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lbcore import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbcore",
        description="Kubernetes-style service load balancing: run the daemon, manage services.",
    )
    parser.add_argument("--version", action="version", version=f"lbcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"lbcore {__version__}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
