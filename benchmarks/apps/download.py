"""A large body yielded in 64 KiB chunks with a Content-Length: the server must stream it.

`?bytes=N` overrides the size so the harness can warm up with a small transfer. `?fresh=1` makes
every chunk a new object, as a real application's are: a server that queues chunks then shows it
in its memory (with one shared block, queued references cost nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from benchmarks.apps import CHUNK, stream_bytes

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _chunks(size: int, fresh: bool) -> Iterator[bytes]:
    block = b"\0" * CHUNK
    full, rest = divmod(size, CHUNK)
    for _ in range(full):
        yield bytes(CHUNK) if fresh else block
    if rest:
        yield block[:rest]


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    size = int(query["bytes"][0]) if "bytes" in query else stream_bytes()
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    )
    return _chunks(size, fresh="fresh" in query)
