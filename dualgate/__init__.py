"""dualgate: an asyncio + h11 HTTP/1.1 server for WSGI and ASGI applications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dualgate.config import Config
from dualgate.version import __version__
from dualgate.wsgi.middleware import WSGIMiddleware
from dualgate.wsgi.pool import WorkerPool

if TYPE_CHECKING:
    from dualgate.launch import run
    from dualgate.server import Server

__all__ = ["Config", "Server", "WSGIMiddleware", "WorkerPool", "__version__", "run"]

# The server and its HTTP core (and h11) load on first use (PEP 562), so that an ASGI
# application which only wants WSGIMiddleware, under another server, does not import them.
_LAZY = frozenset({"Server", "run"})


def __getattr__(name: str) -> Any:
    value: Any
    if name == "Server":
        from dualgate.server import Server as value
    elif name == "run":
        from dualgate.launch import run as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
