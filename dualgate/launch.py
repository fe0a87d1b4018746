"""From a Config to a running server: one process, a supervisor with workers, or the reloader.

The launcher is the only part that knows all three. It hands the process layer the server to
run (`Server` itself, as a `ServerFactory`); the process layer never imports the launcher, nor
the server. `run()` is the library's way in, `serve_config` the command line's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dualgate.config import Config
from dualgate.hooks import ServerHooks
from dualgate.net import systemd
from dualgate.server import Server

__all__ = ["run", "serve_config"]


def serve_config(config: Config) -> int:
    """Serve until stopped; returns the exit code. Failures to start raise, as Server.run does."""
    if config.reload:
        from dualgate.procs.reload import run_reloader

        return run_reloader(config, Server)
    if config.workers is not None:
        from dualgate.procs.supervisor import Supervisor

        return Supervisor(config, Server).run()
    hooks = ServerHooks(on_ready=lambda: _notify("READY=1"), on_stop=lambda: _notify("STOPPING=1"))
    return Server(config, hooks=hooks).run()


def _notify(message: str) -> None:
    systemd.notify(message)


def run(app: str | Callable[..., Any], **options: Any) -> int:
    """Serve `app` (a callable or "module:attr") with the given Config options until stopped.

    With `workers` or `reload`, a supervisor runs the server in worker processes.
    """
    return serve_config(Config(app=app, **options))
