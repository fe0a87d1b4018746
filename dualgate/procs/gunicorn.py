"""`dualgate.procs.gunicorn.Worker`: dualgate as a gunicorn worker class, for WSGI and ASGI apps.

    gunicorn -k dualgate.procs.gunicorn.Worker -w 4 myproject.wsgi:application

gunicorn's arbiter keeps doing what it does (binding, forking, hooks, --max-requests, --timeout,
USR2 upgrades); each worker runs a dualgate Server on the arbiter's sockets. The settings that
mean the same are mapped: --threads, --keep-alive (0: no keep-alive), --graceful-timeout,
--worker-connections, --limit-request-line/-fields/-field-size, --max-requests with its
jitter, --log-level, --access-logfile (on or off; the lines go to dualgate.access). The
heartbeat the arbiter watches (--timeout) is sent from the event loop, so a blocked loop is
noticed. SIGTERM stops gracefully, SIGINT and SIGQUIT at once (after gunicorn's worker_int hook).
gunicorn is an optional extra: pip install 'dualgate[gunicorn]'.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as _GunicornWorker

from dualgate.config import Config
from dualgate.errors import exit_code_for, report
from dualgate.hooks import ServerHooks
from dualgate.http.cycle import RequestCycle
from dualgate.server import Server

__all__ = ["Worker"]

_HEARTBEAT_MOST = 1.0
_QUICK = (signal.SIGINT, signal.SIGQUIT)


class Worker(_GunicornWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """A gunicorn worker serving the loaded application (WSGI or ASGI) with dualgate."""

    # Set by gunicorn's Worker; declared for the type checker.
    alive: bool
    nr: int
    max_requests: int
    ppid: int
    timeout: float
    cfg: Any
    log: Any
    sockets: list[Any]
    wsgi: Any
    server: Server | None = None

    def run(self) -> None:
        if not self.alive:
            return  # a stop signal came while the application loaded
        self.server = Server(
            self.dualgate_config(),
            sockets=[listener.sock for listener in self.sockets],
            hooks=ServerHooks(
                heartbeat=self._heartbeat,
                heartbeat_interval=max(0.05, min(_HEARTBEAT_MOST, self.timeout / 2 or 1.0)),
                on_request=self._on_request,
                # The arbiter's sockets are shared by every worker: a busy one leaves new
                # connections to its siblings.
                pause_when_busy=True,
                multiprocess=self.cfg.workers > 1,
                graceful_signals=(signal.SIGTERM,),
                force_signals=_QUICK,
                on_signal=self._on_signal,
            ),
        )
        try:
            self.server.run()
        except Exception as exc:
            if exit_code_for(exc) is None:
                raise
            report(exc)
            # The arbiter stops altogether on this code, rather than respawning in a loop.
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def dualgate_config(self) -> Config:
        cfg = self.cfg
        options: dict[str, Any] = {
            "app": self.wsgi,
            "threads": max(1, cfg.threads),
            "timeout_graceful_shutdown": float(cfg.graceful_timeout),
            "limit_concurrency": max(1, cfg.worker_connections),
            "log_level": str(cfg.loglevel).lower(),
            "access_log": cfg.accesslog is not None,
        }
        if cfg.keepalive > 0:
            options["timeout_keep_alive"] = float(cfg.keepalive)
        head = _head_size(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )
        if head is not None:
            options["max_head_size"] = head
        return Config(**options)

    # -- hooks, on the server's loop --------------------------------------------------------

    def _heartbeat(self) -> None:
        self.notify()
        if self.ppid != os.getppid() and self.alive:
            self.alive = False
            self.log.info("Parent changed, shutting down: %s", self)
            self._stop()

    def _on_request(self, cycle: RequestCycle) -> bool:
        cfg = self.cfg
        if cfg.keepalive <= 0:
            cycle.keep_alive = False
        refusal = _over_limits(
            cycle, cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )
        if refusal is not None:
            cycle.keep_alive = False
            cycle.respond_error(*refusal)
            return False
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.alive = False
            self.log.info("Autorestarting worker after current request.")
            self._stop()
        return True

    def _on_signal(self, signum: int) -> None:
        self.alive = False
        if signum in _QUICK:
            self.cfg.worker_int(self)

    def _stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def _head_size(line: int, fields: int, field_size: int) -> int | None:
    """The largest head gunicorn's limits let through; None (dualgate's own) if one is off."""
    if line <= 0 or fields <= 0 or field_size <= 0:
        return None
    return line + 2 + fields * (field_size + 2) + 2


def _over_limits(
    cycle: RequestCycle, line: int, fields: int, field_size: int
) -> tuple[int, str] | None:
    """gunicorn's three head limits, checked per part as gunicorn does (0: no limit)."""
    request = cycle.request
    request_line = len(request.method) + len(request.target) + len(request.http_version) + 7
    if line > 0 and request_line > line:
        return 414, "Request line too long\n"
    if fields > 0 and len(request.headers) > fields:
        return 431, "Too many header fields\n"
    if field_size > 0 and any(
        len(name) + len(value) + 2 > field_size for name, value in request.headers
    ):
        return 431, "Header field too large\n"
    return None
