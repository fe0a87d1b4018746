"""The two loggers of dualgate and the shape of an access line.

`dualgate.error` carries start-up, shutdown and every failure (with tracebacks); `dualgate.access`
carries one line per response. Both are plain stdlib loggers, so an embedding application can
route them like any other.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["access_logger", "configure_logging", "error_logger", "format_access", "log_access"]

error_logger = logging.getLogger("dualgate.error")
access_logger = logging.getLogger("dualgate.access")


def configure_logging(level: str, access_log: bool) -> None:
    """Give both loggers a stderr handler unless the embedding program configured them."""
    for logger in (error_logger, access_logger):
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s [%(name)s] %(levelname)s %(message)s")
            )
            logger.addHandler(handler)
            logger.propagate = False
    error_logger.setLevel(level.upper())
    access_logger.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)


def format_access(
    client: str, method: str, target: str, version: str, status: int, sent: int, seconds: float
) -> str:
    return f'{client} "{method} {target} HTTP/{version}" {status} {sent} {seconds * 1000:.1f}ms'


def log_access(
    client: tuple[str, int | None] | None,
    method: bytes,
    target: bytes,
    http_version: bytes,
    status: int,
    sent: int,
    started_at: float,
) -> None:
    """One access line for a finished (or broken-off) response, naming the real client (the
    one a trusted proxy forwarded, when it did). Every protocol calls this one, with values:
    the HTTP/1.1 connection, the WebSocket handshake."""
    access_logger.info(
        format_access(
            _client(client),
            method.decode("ascii", "replace"),
            target.decode("ascii", "replace"),
            http_version.decode("ascii", "replace"),
            status,
            sent,
            time.monotonic() - started_at,
        )
    )


def _client(client: tuple[str, int | None] | None) -> str:
    if client is None:
        return "-"
    return client[0] if client[1] is None else f"{client[0]}:{client[1]}"
