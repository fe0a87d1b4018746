"""dualgate: an asyncio + h11 HTTP/1.1 server for WSGI and ASGI applications."""

from dualgate.config import Config
from dualgate.middleware import WSGIMiddleware
from dualgate.server import Server, run

__version__ = "0.1.0"

__all__ = ["Config", "Server", "WSGIMiddleware", "__version__", "run"]
