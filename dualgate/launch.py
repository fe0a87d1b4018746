"""From a Config to a running server: one process, a supervisor with workers, or the reloader.

The launcher is the only part that knows all three. It hands the process layer the server to
run (`Server` itself, as a `ServerFactory`); the process layer never imports the launcher, nor
the server. `run()` is the library's way in, `serve_config` the command line's. Whichever runs,
the process that started it holds the --pid file: the server's, or the supervisor's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from dualgate.config import Config
from dualgate.errors import ConfigError
from dualgate.hooks import ServerHooks
from dualgate.net import systemd
from dualgate.server import Server

__all__ = ["run", "serve_config"]


def serve_config(config: Config) -> int:
    """Serve until stopped; returns the exit code. Failures to start raise, as Server.run does."""
    with _pid_file(config.pid):
        return _serve(config)


def _serve(config: Config) -> int:
    if config.reload:
        from dualgate.procs.reload import run_reloader

        return run_reloader(config, Server)
    if config.workers is not None:
        from dualgate.procs.supervisor import Supervisor

        return Supervisor(config, Server).run()
    hooks = ServerHooks(on_ready=lambda: _notify("READY=1"), on_stop=lambda: _notify("STOPPING=1"))
    return Server(config, hooks=hooks).run()


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """This process's id in `path` while it runs. Written whole (a reader never sees half of
    it) and removed at exit only while it still holds this id: another instance started with
    the same file meanwhile keeps its own."""
    if path is None:
        yield
        return
    pid = str(os.getpid())
    partial = f"{path}.{pid}.tmp"
    try:
        with open(partial, "w") as file:
            file.write(pid + "\n")
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise ConfigError(f"--pid {path}: {exc.strerror}") from None
    try:
        yield
    finally:
        ours = False
        with contextlib.suppress(OSError), open(path) as file:
            ours = file.read().strip() == pid
        if ours:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _notify(message: str) -> None:
    systemd.notify(message)


def run(app: str | Callable[..., Any], **options: Any) -> int:
    """Serve `app` (a callable or "module:attr") with the given Config options until stopped.

    With `workers` or `reload`, a supervisor runs the server in worker processes.
    """
    return serve_config(Config(app=app, **options))
