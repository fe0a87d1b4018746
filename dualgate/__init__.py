"""dualgate: an asyncio + h11 HTTP/1.1 server for WSGI and ASGI applications."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dualgate.config import Config
from dualgate.wsgi.middleware import WSGIMiddleware
from dualgate.wsgi.pool import WorkerPool

if TYPE_CHECKING:
    from dualgate.server import Server, run

__version__ = "0.1.0"

__all__ = ["Config", "Server", "WSGIMiddleware", "WorkerPool", "__version__", "run"]

# The server and its HTTP core (and h11) load on first use (PEP 562), so that an ASGI
# application which only wants WSGIMiddleware, under another server, does not import them.
_LAZY = frozenset({"Server", "run"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from dualgate import server

        value = getattr(server, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
