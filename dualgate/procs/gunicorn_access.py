"""Each finished response, handed to gunicorn's logger: `log.access(resp, req, environ, delta)`.

gunicorn's Logger formats --access-log-format into --access-logfile (or syslog, or a log
config), and its Statsd logger counts gunicorn.requests, gunicorn.request.status.NNN and
times gunicorn.request.duration from the same call. The worker installs this only while one
of them wants the calls (`wanted`), so a request costs nothing for it otherwise.

The loop's share is one tuple of references put on a queue (`on_response`); building the
request, response and environ gunicorn's `atoms()` reads, formatting and writing the line,
and sending the statsd datagrams happen on a thread of its own.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple

from gunicorn.glogging import Logger

from dualgate.http.paths import strip_root_path
from dualgate.http.reader import Request
from dualgate.logs import error_logger
from dualgate.wsgi.bridge import BytesSource, build_environ, path_info_from_raw

if TYPE_CHECKING:
    from dualgate.http.cycle import RequestCycle

__all__ = ["AccessReporter", "LoggedRequest", "LoggedResponse", "shape", "wanted"]

_EMPTY = b""


def wanted(log: Any) -> bool:
    """Whether gunicorn's logger does anything with `access()`: it writes access lines, or it
    is not gunicorn's plain Logger (Statsd counts in `access`, a custom class may too)."""
    if type(log) is not Logger:
        return True
    enabled = getattr(log, "access_log_enabled", None)  # gunicorn 25+
    if enabled is None:
        cfg = log.cfg
        enabled = cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or cfg.syslog
    return bool(enabled)


class LoggedRequest:
    """The parts of gunicorn's Request a logger reads (`headers` upper-cased, as gunicorn's)."""

    __slots__ = ("headers", "method", "path", "query", "scheme", "uri", "version")

    def __init__(self, request: Request, scheme: str) -> None:
        self.method = request.method.decode("ascii", "replace")
        self.uri = request.target.decode("latin-1")
        self.path, _, self.query = self.uri.partition("?")
        major, _, minor = request.http_version.partition(b".")
        self.version = (int(major or 1), int(minor or 0))
        self.scheme = scheme
        self.headers = [
            (name.decode("latin-1").upper(), value.decode("latin-1"))
            for name, value in request.headers
        ]


class LoggedResponse:
    """The parts of gunicorn's Response a logger reads. No headers: dualgate does not keep
    them (an access_log_format asking for one is refused)."""

    __slots__ = ("headers", "response_length", "sent", "status", "status_code")

    def __init__(self, status: int, sent: int) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        self.status = f"{status} {reason}".rstrip()
        self.status_code = status
        self.sent = sent
        self.response_length = sent
        self.headers: list[tuple[str, str]] = []


class _Finished(NamedTuple):
    request: Request
    client: tuple[str, int | None] | None
    server: tuple[str, int | None] | None
    scheme: str
    status: int
    sent: int
    seconds: float


def shape(
    finished: _Finished, root_path: str, multiprocess: bool
) -> tuple[LoggedResponse, LoggedRequest, dict[str, Any], datetime.timedelta]:
    """`log.access`'s arguments for one response: the environ is the one a WSGI application
    of this server saw (what the application saw, for an ASGI one), plus gunicorn's RAW_URI."""
    request = finished.request
    raw_path, _, query = request.target.partition(b"?")
    path_info = path_info_from_raw(raw_path)
    below = strip_root_path(path_info, root_path)
    environ = build_environ(
        method=request.method.decode("ascii", "replace"),
        script_name=root_path if below is not None else "",
        path_info=below if below is not None else path_info,
        query_string=query.decode("latin-1"),
        headers=request.headers,
        http_version=request.http_version.decode("ascii", "replace"),
        scheme=finished.scheme,
        client=finished.client,
        server=finished.server,
        body=BytesSource(_EMPTY),
        multiprocess=multiprocess,
    )
    environ["RAW_URI"] = request.target.decode("latin-1")
    return (
        LoggedResponse(finished.status, finished.sent),
        LoggedRequest(request, finished.scheme),
        environ,
        datetime.timedelta(seconds=finished.seconds),
    )


class AccessReporter:
    """Takes finished responses on the loop and calls `log.access` for each on its thread."""

    def __init__(self, log: Any, root_path: str, multiprocess: bool) -> None:
        self._log = log
        self._root_path = root_path
        self._multiprocess = multiprocess
        self._queue: queue.SimpleQueue[_Finished | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gunicorn-access", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_response(self, cycle: RequestCycle) -> None:
        """On the loop, once per response: references only, nothing formatted here."""
        self._queue.put(
            _Finished(
                cycle.request,
                cycle.client,
                cycle.server,
                cycle.scheme,
                cycle.status,
                cycle.sent_bytes,
                time.monotonic() - cycle.started_at,
            )
        )

    def close(self, timeout: float) -> None:
        """Report what is queued (for up to `timeout` seconds), then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            finished = self._queue.get()
            if finished is None:
                return
            try:
                self._log.access(*shape(finished, self._root_path, self._multiprocess))
            except Exception:
                # gunicorn's own loggers catch their errors; a custom one may not.
                error_logger.exception("gunicorn's log.access failed")
