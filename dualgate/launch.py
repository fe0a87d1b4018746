"""From a Config to a running server: one process, a supervisor with workers, or the reloader.

Also the one place that turns a failure to start into a single stderr line and an exit code, so
the command line, each worker process and the supervisor report alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dualgate.asgi.handler import LifespanFailure
from dualgate.config import AppLoadError, Config, ConfigError
from dualgate.server import Server, ServerHooks

__all__ = [
    "EXIT_APP_LOAD",
    "EXIT_CONFIG",
    "EXIT_LIFESPAN",
    "EXIT_WORKERS_FAILED",
    "exit_code_for",
    "report",
    "reporting_failures",
    "run_server",
    "serve_config",
]

EXIT_APP_LOAD = 1
EXIT_CONFIG = 2
EXIT_LIFESPAN = 3
# The supervisor gave up: workers failed to start too many times in a row.
EXIT_WORKERS_FAILED = 4


def serve_config(config: Config) -> int:
    """Serve until stopped; returns the exit code. Failures to start raise, as Server.run does."""
    if config.reload:
        from dualgate.procs.reload import run_reloader

        return run_reloader(config)
    if config.workers is not None:
        from dualgate.procs.supervisor import Supervisor

        return Supervisor(config).run()
    from dualgate.net import systemd

    sockets = systemd.listen_sockets()
    hooks = ServerHooks(on_ready=lambda: _notify("READY=1"), on_stop=lambda: _notify("STOPPING=1"))
    return Server(config, sockets=sockets, hooks=hooks).run()


def _notify(message: str) -> None:
    from dualgate.net import systemd

    systemd.notify(message)


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a failure to start that one line explains; None for anything else."""
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, AppLoadError):
        return EXIT_APP_LOAD
    if isinstance(exc, LifespanFailure):
        return EXIT_LIFESPAN
    if isinstance(exc, OSError):
        return EXIT_APP_LOAD
    return None


def report(exc: BaseException) -> None:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    print(f"dualgate: error: {text}", file=sys.stderr, flush=True)


def run_server(server: Server) -> int:
    """Server.run(), with a failure to start told in one line and turned into an exit code."""
    return reporting_failures(server.run)


def reporting_failures(serve: Callable[[], int]) -> int:
    """`serve()`, with a failure to start told in one line and turned into an exit code."""
    try:
        return serve()
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        report(exc)
        return code
