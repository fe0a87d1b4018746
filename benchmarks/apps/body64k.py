"""A 64 KiB body in one piece: larger than one socket write, so send buffering shows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

BODY = b"x" * (64 * 1024)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]
