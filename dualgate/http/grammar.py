"""The HTTP grammar every other module shares: one token pattern, one field-value check.

RFC 9110 section 5.6.2 (token) and section 5.5 (field values: no control characters but HTAB),
plus the standard reason phrases. Request checks (checks.py), chunk lines (checks.py), response
heads (framing.py) and the WSGI bridge (wsgi.py) all take their patterns from here, so a
fix to the grammar is made once. So do the ASGI interfaces, HTTP (asgi/handler.py) and
WebSocket (ws/session.py), for the header lists an application sends (`asgi_headers`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus

__all__ = [
    "BAD_VALUE",
    "BAD_VALUE_TEXT",
    "QUOTED_STRING",
    "REASONS",
    "TOKEN",
    "TOKEN_CHARS",
    "TOKEN_TEXT",
    "Headers",
    "asgi_headers",
    "parse_header",
]

Headers = list[tuple[bytes, bytes]]

TOKEN_CHARS = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
TOKEN = re.compile(TOKEN_CHARS + rb"+")
QUOTED_STRING = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# Any control character but HTAB: CR and LF above all, which would split a header in two.
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The same two patterns over native strings, for WSGI's str headers (wsgi.py).
TOKEN_TEXT = re.compile(TOKEN.pattern.decode("ascii"))
BAD_VALUE_TEXT = re.compile(BAD_VALUE.pattern.decode("ascii"))

REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# RFC 9110 renamed these; Python 3.11's http module still has the RFC 7231 phrases.
REASONS.update({413: b"Content Too Large", 414: b"URI Too Long", 422: b"Unprocessable Content"})


def asgi_headers(raw: Iterable[tuple[object, object]]) -> Headers:
    """An ASGI application's header list, as a list; the names and values must be bytes.

    Only the type is checked here: the names and values themselves are checked where they are
    written (framing.py, or wsproto for a WebSocket's).
    """
    headers: Headers = []
    for name, value in raw:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"ASGI header names and values must be bytes: {(name, value)!r}")
        headers.append((name, value))
    return headers


def parse_header(text: str) -> tuple[bytes, bytes]:
    """One --header NAME:VALUE as the response carries it (ValueError says what is wrong)."""
    name, sep, value = text.partition(":")
    value = value.strip(" \t")
    if not sep or not TOKEN_TEXT.fullmatch(name):
        raise ValueError(f"takes NAME:VALUE with NAME a header name, got {text!r}")
    if BAD_VALUE_TEXT.search(value) or not value.isascii():
        raise ValueError(f"takes a header value of printable ASCII, got {text!r}")
    return name.lower().encode("ascii"), value.encode("ascii")
