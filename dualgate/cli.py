"""`dualgate serve APP [options]`: every flag comes from a field of Config, nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from dualgate.config import Config
from dualgate.errors import reporting_failures
from dualgate.launch import serve_config
from dualgate.version import __version__

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage block.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag_kwargs(kind: Any, metavar: str) -> dict[str, Any]:
    """argparse settings for a Config field of type `kind`."""
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is typing.Literal:
        return {"choices": typing.get_args(kind)}
    if typing.get_origin(kind) is tuple:
        return {"action": "append", "type": typing.get_args(kind)[0], "metavar": metavar}
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        concrete = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _flag_kwargs(concrete[0], metavar)
    return {"type": kind, "metavar": metavar}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dualgate", description="An asyncio + h11 server for WSGI and ASGI apps.")
    parser.add_argument("--version", action="version", version=f"dualgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="serve an application", description="Serve a WSGI or ASGI application."
    )
    serve.add_argument(
        "app", nargs="?", metavar="MODULE:ATTR", help="the application, e.g. hello:application"
    )
    hints = typing.get_type_hints(Config)
    for item in dataclasses.fields(Config):
        if not item.metadata.get("flag", True):
            continue
        metavar = item.metadata.get("metavar", item.name.upper())
        kwargs = _flag_kwargs(hints[item.name], metavar)
        default = item.default
        if default is dataclasses.MISSING:  # computed per Config: --help says from what
            default = item.metadata.get("shown_default")
        shown = (
            ""
            if default in (None, (), "") or isinstance(default, bool)
            else f" (default: {default})"
        )
        serve.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            default=argparse.SUPPRESS,
            # Plain text, not an argparse template: a % in it (--access-log-format's) is kept.
            help=(item.metadata["help"] + shown).replace("%", "%%"),
            **kwargs,
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    args.pop("command")
    for name, value in args.items():
        if isinstance(value, list):  # repeatable flags: Config keeps tuples
            args[name] = tuple(value)
    return reporting_failures(lambda: serve_config(Config(**args)))


if __name__ == "__main__":
    sys.exit(main())
