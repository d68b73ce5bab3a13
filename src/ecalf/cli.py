"""Command line: parse arguments, load config, call the library. No logic lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ecalf.errors import EcalfError


def _cmd_list_models(args: argparse.Namespace) -> int:
    from ecalf.registry import list_models

    for entry in list_models():
        print(f"{entry.name:14s} {entry.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecalf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list-models", help="list the registered models")
    p.set_defaults(func=_cmd_list_models)

    # (subcommands of each area are added below this line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EcalfError as exc:
        print(f"ecalf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecalf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
