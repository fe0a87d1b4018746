"""`dualgate.procs.gunicorn.Worker`: dualgate as a gunicorn worker class, for WSGI and ASGI apps.

    gunicorn -k dualgate.procs.gunicorn.Worker -w 4 myproject.wsgi:application

gunicorn's arbiter keeps doing what it does (binding, forking, hooks, --max-requests, --timeout,
USR2 upgrades); each worker runs a dualgate Server on the arbiter's sockets, with what
gunicorn's settings mean to dualgate (gunicorn_settings.py: TLS from --certfile/--keyfile,
--forwarded-allow-ips, --proxy-protocol, the limits, keep-alive, threads...). A setting set to
something dualgate cannot do is refused with one line naming it, by the arbiter before any
worker starts (`check_config`) and by each worker before it loads the application (a
configuration reloaded on SIGHUP), so nothing is ever served other than what gunicorn
announced. gunicorn's logger gets each finished response (gunicorn_access.py) while it
writes an access log or counts statsd figures, and dualgate's own lines go to gunicorn's
error log. The heartbeat the arbiter watches (--timeout) is sent from the event loop, so a
blocked loop is noticed. SIGTERM stops gracefully, SIGINT and SIGQUIT at once (after
gunicorn's worker_int hook). gunicorn is an optional extra: pip install 'dualgate[gunicorn]'.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as _GunicornWorker

from dualgate.config import Config
from dualgate.errors import ConfigError, exit_code_for, report
from dualgate.hooks import ServerHooks
from dualgate.http.cycle import RequestCycle
from dualgate.logs import error_logger
from dualgate.procs.gunicorn_access import AccessReporter, wanted
from dualgate.procs.gunicorn_settings import in_gunicorns_words, options, refusal
from dualgate.server import Server

__all__ = ["Worker"]

_HEARTBEAT_MOST = 1.0
# How long a stopping worker waits for gunicorn's logger to take the last responses.
_ACCESS_FLUSH = 5.0
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
    _options: dict[str, Any]

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the arbiter, before it starts a worker: a setting dualgate cannot honour stops
        gunicorn with one line naming it."""
        line = refusal(cfg)
        if line is not None:
            log.error("%s", line)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def init_process(self) -> None:
        # Checked again here, before the application loads: SIGHUP reloads the settings and
        # starts new workers without asking check_config.
        line = refusal(self.cfg)
        if line is not None:
            self.log.error("%s", line)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        self._options = options(self.cfg)
        super().init_process()

    def run(self) -> None:
        if not self.alive:
            return  # a stop signal came while the application loaded
        config = self.dualgate_config()
        self._join_error_log()
        reporter = None
        if wanted(self.log):
            reporter = AccessReporter(self.log, config.root_path, self.cfg.workers > 1)
            reporter.start()
        self.server = Server(
            config,
            sockets=[listener.sock for listener in self.sockets],
            hooks=ServerHooks(
                heartbeat=self._heartbeat,
                heartbeat_interval=max(0.05, min(_HEARTBEAT_MOST, self.timeout / 2 or 1.0)),
                on_request=self._on_request,
                on_response=reporter.on_response if reporter is not None else None,
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
            report(in_gunicorns_words(str(exc)) if isinstance(exc, ConfigError) else exc)
            # The arbiter stops altogether on this code, rather than respawning in a loop.
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        finally:
            if reporter is not None:
                reporter.close(_ACCESS_FLUSH)

    def dualgate_config(self) -> Config:
        cfg = self.cfg
        found = getattr(self, "_options", None)
        found = dict(found if found is not None else options(cfg))
        found["app"] = self.wsgi
        head = _head_size(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )
        if head is not None:
            found["max_head_size"] = head
        return Config(**found)

    def _join_error_log(self) -> None:
        """dualgate.error writes where gunicorn.error does (--error-logfile, syslog, a log
        config), unless the application configured it already."""
        gunicorn_errors = getattr(self.log, "error_log", None)
        if isinstance(gunicorn_errors, logging.Logger) and not error_logger.handlers:
            for handler in gunicorn_errors.handlers:
                error_logger.addHandler(handler)
            error_logger.propagate = gunicorn_errors.propagate

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
