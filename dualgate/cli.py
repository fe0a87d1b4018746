"""`dualgate serve APP [options]`: every flag comes from a field of Config, nothing else.

The flags, their groups in --help and their defaults are read from Config's fields (through
settings.py, which reads the environment and the files by the same description); the command
line only adds where the other settings come from (`--env-file`, `--config`), `--print-config`
and `--version`. A flag typed from gunicorn's or uvicorn's habit gets a hint, never an alias:
each setting has one spelling.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from dualgate.config import SECTIONS, Config
from dualgate.errors import EXIT_CONFIG, reporting_failures
from dualgate.launch import serve_config
from dualgate.settings import CONFIG_VARIABLE, ENV_FILE_VARIABLE, SETTINGS, Setting, render, resolve
from dualgate.version import __version__

__all__ = ["HINTS", "build_parser", "main"]

_TIMEOUTS = (
    "which timeout? gunicorn's --timeout (a worker silent that long is killed) is "
    "--timeout-worker-healthcheck; --timeout-keep-alive, --timeout-request-head, --timeout-read, "
    "--timeout-write and --timeout-graceful-shutdown bound connections and requests"
)
_NO_CLASS = (
    "dualgate has no worker classes: it serves WSGI and ASGI applications itself "
    "(--interface wsgi|asgi when the guess is wrong)"
)
# What gunicorn and uvicorn users type, and what dualgate says instead.
HINTS = {
    "-w": "use --workers N",
    "-b": "use --bind ADDRESS (repeatable: HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N)",
    "-k": _NO_CLASS,
    "--worker-class": _NO_CLASS,
    "-c": "use --config FILE.toml (a TOML file of dualgate's settings, not Python)",
    "-p": "use --pid FILE",
    "-e": "use --env-file FILE, or the environment itself",
    "--env": "use --env-file FILE, or the environment itself",
    "--timeout": _TIMEOUTS,
    "-t": _TIMEOUTS,
    "--graceful-timeout": "use --timeout-graceful-shutdown SECONDS",
    "--keep-alive": "use --timeout-keep-alive SECONDS",
    "--max-requests": "use --limit-max-requests N",
    "--max-requests-jitter": "use --limit-max-requests-jitter N",
    "--worker-connections": "use --limit-concurrency N",
    "--chdir": "use --app-dir DIR",
    "--certfile": "use --ssl-certfile FILE",
    "--keyfile": "use --ssl-keyfile FILE",
    "--ca-certs": "use --ssl-ca-certs FILE",
    "--cert-reqs": "use --ssl-cert-reqs",
    "--ciphers": "use --ssl-ciphers",
    "--h11-max-incomplete-event-size": "use --max-head-size BYTES",
    "--timeout-notify": "use --timeout-worker-healthcheck SECONDS",
    "-D": "dualgate does not daemonize: run it under systemd, in a container, or with nohup",
    "--daemon": "dualgate does not daemonize: run it under systemd, in a container, or with nohup",
    "--preload": (
        "the supervisor never imports the application: each worker does (so SIGHUP loads new code)"
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line instead of argparse's usage block.
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, argparse.BooleanOptionalAction):
            return " / ".join(action.option_strings)
        return super()._format_action_invocation(action)


def _flag_kwargs(setting: Setting) -> dict[str, Any]:
    """argparse settings for a Config field."""
    if setting.kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if setting.choices:
        return {"choices": setting.choices}
    if setting.repeatable:
        return {"action": "append", "type": setting.kind, "metavar": setting.metavar}
    return {"type": setting.kind, "metavar": setting.metavar}


def _shown_default(setting: Setting) -> str:
    if "(default:" in setting.help:
        return ""
    default = setting.default
    if isinstance(default, bool):
        text = "on" if default else "off"
    elif default in (None, (), ""):
        text = "none"
    else:
        text = str(default)
    return f" (default: {text})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dualgate",
        description="An asyncio + h11 server for WSGI and ASGI apps.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"dualgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        usage="dualgate serve [MODULE:ATTR] [options]",
        help="serve an application",
        description="Serve a WSGI or ASGI application.",
        epilog=(
            "Every flag may also be given as DUALGATE_<FLAG> in the environment (DUALGATE_PORT, "
            "DUALGATE_ACCESS_LOG=false), in an env file or in a TOML config file; "
            "--print-config shows the result and where each value comes from."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    serve.add_argument(
        "app",
        nargs="?",
        metavar="MODULE:ATTR",
        help="the application, e.g. hello:application (or DUALGATE_APP, or app in --config)",
    )
    groups = {name: serve.add_argument_group(title) for name, title in SECTIONS.items()}
    for setting in SETTINGS.values():
        if not setting.is_flag:
            continue
        groups[setting.section].add_argument(
            setting.flag,
            dest=setting.name,
            default=argparse.SUPPRESS,
            # Plain text, not an argparse template: a % in it (--access-log-format's) is kept.
            help=(setting.help + _shown_default(setting)).replace("%", "%%"),
            **_flag_kwargs(setting),
        )
    sources = serve.add_argument_group("where the settings come from")
    sources.add_argument(
        "--env-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="KEY=VALUE lines put into the application's environment before it is imported "
        "(the real environment wins); DUALGATE_* ones are settings too (or "
        f"{ENV_FILE_VARIABLE}) (default: none)",
    )
    sources.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="a TOML file of settings by long flag name, e.g. port = 8080 (or "
        f"{CONFIG_VARIABLE}) (default: none)",
    )
    sources.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings serve would run with, and where each comes from, then exit",
    )
    sources.add_argument("--version", action="version", version=f"dualgate {__version__}")
    for name in HINTS:  # a hint never hides a flag of dualgate's own
        assert name not in serve._option_string_actions, name
    return parser


def _hint(argv: Sequence[str]) -> str | None:
    """The hint for the first flag of gunicorn's or uvicorn's in `argv`, if there is one."""
    for token in argv:
        if token == "--":
            return None
        if token.startswith("--"):
            name = token.split("=", 1)[0]
        elif token.startswith("-") and len(token) > 1:
            name = token[:2]  # -w4 and -w 4 alike
        else:
            continue
        if name in HINTS:
            return f"{name} is not a dualgate flag: {HINTS[name]}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    hint = _hint(argv)
    if hint is not None:
        parser.error(hint)
    args = vars(parser.parse_args(argv))
    args.pop("command")
    print_config = args.pop("print_config", False)
    for name, value in args.items():
        if isinstance(value, list):  # repeatable flags: Config keeps tuples
            args[name] = tuple(value)
    if args.get("app") is None:
        args.pop("app", None)  # not given here: the environment or a file may name it

    def serve() -> int:
        resolved = resolve(args, os.environ)
        # Before Config is made: defaults read from the environment see the env file too.
        resolved.export()
        config = Config(**resolved.values)
        if print_config:
            sys.stdout.write(render(config, resolved))
            return 0
        return serve_config(config)

    return reporting_failures(serve)


if __name__ == "__main__":
    sys.exit(main())
