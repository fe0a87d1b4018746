"""The ASGI connection scope's shared part, for an HTTP request and a WebSocket alike. Pure.

Both scopes take the path, raw_path, query_string and root_path from the request target by
one rule: the path is percent-decoded, and when a proxy in front stripped the root path (the
target does not lie under it), the root path is put back, as the ASGI spec defines `path` as
the full path. `proxy_root` is the part of the root path a proxy may strip (the server's own
root path, without a --mount prefix); all of it when None.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from dualgate.http.grammar import Headers
from dualgate.http.paths import strip_root_path

__all__ = ["connection_scope"]


def connection_scope(
    kind: str,
    asgi: dict[str, str],
    http_version: str,
    scheme: str,
    target: bytes,
    headers: Headers,
    *,
    root_path: str,
    proxy_root: str | None = None,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    state: dict[str, Any] | None,
) -> dict[str, Any]:
    raw_path, _, query = target.partition(b"?")
    path = unquote(raw_path.decode("ascii", "surrogateescape"))
    stripped = root_path if proxy_root is None else proxy_root
    if strip_root_path(path, stripped) is None:
        # Behind a proxy that strips the prefix, the full path is the prefix plus what came.
        path = stripped + path
        raw_path = stripped.encode("utf-8") + raw_path
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": asgi,
        "http_version": http_version,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
    }
    if state is not None:
        # Each request gets a shallow copy of the lifespan state (the ASGI spec's words).
        scope["state"] = state.copy()
    return scope
