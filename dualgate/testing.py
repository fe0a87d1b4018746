"""A real dualgate server for your own tests: `serving(app)` yields its base URL.

    import httpx
    from dualgate.testing import serving

    def test_home() -> None:
        with serving(app) as url:  # "http://127.0.0.1:PORT"
            assert httpx.get(url + "/").status_code == 200

`serving(app, **options)` serves `app` (a WSGI or ASGI callable, or "module:attr") from a
thread of the test's process, on 127.0.0.1 and a free port, with any of Config's fields as
`options` (`access_log` is off unless asked for). The URL comes once the server is ready: its
socket bound, the application loaded, ASGI lifespan start-up done. The scheme is https with
`ssl_certfile`.

- A failure to start is raised in the test as the server raised it: AppLoadError, ConfigError,
  LifespanFailure, or an OSError when the address is taken.
- Leaving the block stops the server as SIGTERM would: no new connection is accepted, requests
  in flight finish (up to `timeout_graceful_shutdown`), lifespan shutdown runs, and the thread
  is joined. An exception the server raised while it ran is raised then; a server that has not
  stopped in time raises RuntimeError rather than leaving a thread behind.
- `timeout`: seconds the start may take, and the stop beyond `timeout_graceful_shutdown`.

The server installs no signal handlers from a thread, so the test runner keeps its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dualgate.config import Config
from dualgate.net.listeners import describe_address
from dualgate.server import Server

__all__ = ["serving"]


@contextmanager
def serving(
    app: str | Callable[..., Any], *, timeout: float = 10.0, **options: Any
) -> Iterator[str]:
    """Serve `app` in a thread for the block's duration; yields the server's base URL."""
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    options.setdefault("access_log", False)
    config = Config(app=app, **options)
    server = Server(config)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # raised in the test's thread, below
            failures.append(exc)

    thread = threading.Thread(target=run, name="dualgate.testing", daemon=True)
    thread.start()
    if not server.started.wait(timeout):
        server.shutdown(force=True)
        thread.join(timeout)
        raise RuntimeError(f"dualgate.testing: the server did not start within {timeout}s")
    if server.startup_error is not None:
        thread.join(timeout)
        raise server.startup_error
    scheme = "https" if config.ssl_certfile is not None else "http"
    try:
        yield describe_address(server.addresses[0], scheme)
    finally:
        server.shutdown()
        thread.join(config.timeout_graceful_shutdown + timeout)
    if thread.is_alive():
        raise RuntimeError("dualgate.testing: the server did not stop in time")
    if failures:
        raise failures[0]
