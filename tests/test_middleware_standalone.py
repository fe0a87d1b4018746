"""WSGIMiddleware as a library for other ASGI servers: what importing it loads, its defaults.

The import checks run in a fresh interpreter, since this test process has long imported the
server (and h11) through other tests.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from dualgate import Config, WorkerPool, WSGIMiddleware

ROOT = Path(__file__).resolve().parent.parent
CORE = (
    "h11",
    "dualgate.http.connection",
    "dualgate.server",
    "dualgate.wsgi.threads",
    "dualgate.http.checks",
)


def _run_python(code: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_middleware_serves_without_importing_the_http_core() -> None:
    output = _run_python(
        f"""
        import asyncio, sys
        from dualgate import WSGIMiddleware, WorkerPool
        import dualgate.wsgi.middleware

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello"]

        async def main():
            sent = []
            messages = [{{"type": "http.request", "body": b""}}]
            async def receive():
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()  # no disconnect: the client waits for its answer
            async def send(message):
                sent.append(message)
            scope = {{"type": "http", "method": "GET", "path": "/", "headers": []}}
            middleware = WSGIMiddleware(app, threads=1)
            await middleware(scope, receive, send)
            middleware.close()
            return sent

        sent = asyncio.run(main())
        print(sent[0]["status"], sent[-1]["body"])
        print(sorted(name for name in {CORE!r} if name in sys.modules))
        """
    )
    assert output.splitlines() == ["200 b'hello'", "[]"]


def test_server_and_run_still_import_from_the_package() -> None:
    output = _run_python(
        """
        import sys
        import dualgate
        print("h11" in sys.modules)
        from dualgate import Server, run
        import dualgate.launch, dualgate.server
        print("h11" in sys.modules, Server is dualgate.server.Server, run is dualgate.launch.run)
        print(sorted(set(dualgate.__all__) - set(dir(dualgate))))
        """
    )
    assert output.splitlines() == ["False", "True True True", "[]"]


def test_defaults_are_the_servers() -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(Config)}
    middleware = WSGIMiddleware(lambda environ, start_response: [])
    assert middleware.threads == defaults["threads"]
    assert middleware.worker_wait == defaults["timeout_worker"]


def test_pool_is_the_exported_worker_pool() -> None:
    pool = WorkerPool(1, name="test-standalone-pool")
    try:
        middleware = WSGIMiddleware(lambda environ, start_response: [], pool=pool)
        assert middleware.pool is pool
        middleware.close()  # a pool passed in is its owner's to stop
        names = [thread.name for thread in threading.enumerate()]
        assert "test-standalone-pool-0" in names
    finally:
        pool.shutdown(5.0)
