"""ASGI lifespan (spec 2.4) and how dualgate picks an application's interface."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from dualgate import Config, Server
from tests.conftest import (
    SOCKET_TIMEOUT,
    Message,
    Receive,
    Scope,
    Send,
    ServeFactory,
    asgi_app,
    request,
    running_server,
)

WAIT = 10.0
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def json_response(send: Send, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def start_failure(app: Any, **options: Any) -> BaseException | None:
    """Run a Server for `app` in a thread; the exception its start-up ended with, or None if it
    started serving (it is then stopped). Bounded throughout."""
    server = Server(
        Config(app=app, host="127.0.0.1", port=0, access_log=False, loop="asyncio", **options)
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert server.started.wait(WAIT), "the server neither started nor failed"
    thread.join(1.0)
    if thread.is_alive():  # it is serving
        server.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive()
        return None
    return failure[0] if failure else None


# -- startup, shutdown, state -------------------------------------------------------------


def test_lifespan_startup_before_serving_and_shutdown_on_stop() -> None:
    events: list[str] = []
    lifespan_scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            lifespan_scopes.append(scope)
            message = await receive()
            events.append(message["type"])
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            events.append(message["type"])
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append("http " + scope["path"])
        await json_response(send, {})

    with running_server(app, lifespan="on") as server:
        assert events == ["lifespan.startup"]
        assert request(server.port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")[0].endswith(b"200 OK")
        assert events == ["lifespan.startup", "http /one"]
    assert events == ["lifespan.startup", "http /one", "lifespan.shutdown"]
    [scope] = lifespan_scopes
    assert scope["type"] == "lifespan"
    assert scope["asgi"]["version"] == "3.0"
    assert isinstance(scope["asgi"]["spec_version"], str)
    assert isinstance(scope["state"], dict)


def test_lifespan_state_is_a_shallow_copy_per_request(serve: ServeFactory) -> None:
    shared: list[str] = []
    seen: list[dict[str, Any]] = []

    def startup(scope: Scope) -> None:
        scope["state"].update(greeting="hello", shared=shared)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        seen.append(dict(state))
        # Mutations of one request's copy must not reach the next request.
        state["greeting"] = "changed by " + scope["path"]
        state["added"] = scope["path"]
        state["shared"].append(scope["path"])
        await json_response(send, {"greeting": seen[-1]["greeting"]})

    server = serve(asgi_app(handler, startup))
    for path in (b"/one", b"/two"):
        status, _, body = request(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 200 OK"
        assert json.loads(body) == {"greeting": "hello"}
    first, second = seen
    assert first.keys() == second.keys() == {"greeting", "shared"}
    assert first["greeting"] == second["greeting"] == "hello"
    # Shallow: the objects in the namespace are the lifespan's own.
    assert first["shared"] is shared and second["shared"] is shared
    assert shared == ["/one", "/two"]


def test_lifespan_off_never_calls_the_app_with_a_lifespan_scope(serve: ServeFactory) -> None:
    types: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        types.append(scope["type"])
        await json_response(send, {})

    server = serve(app, lifespan="off")
    assert request(server.port, GET)[0] == b"HTTP/1.1 200 OK"
    assert types == ["http"]


# -- failures ------------------------------------------------------------------------------


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await json_response(send, {})


async def lifespan_unsupported(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")
    await json_response(send, {"state": "state" in scope})


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_startup_failed_stops_the_server_from_starting(mode: str) -> None:
    failure = start_failure(failing_startup, lifespan=mode)
    assert failure is not None, "the server started although startup failed"
    assert "database unreachable" in str(failure)


def test_lifespan_on_with_an_app_raising_on_lifespan_fails_start() -> None:
    failure = start_failure(lifespan_unsupported, lifespan="on")
    assert failure is not None, "the server started although the lifespan raised"


def test_lifespan_auto_with_an_app_raising_on_lifespan_is_served(serve: ServeFactory) -> None:
    server = serve(lifespan_unsupported, lifespan="auto")
    status, _, body = request(server.port, GET)
    assert status == b"HTTP/1.1 200 OK"
    assert isinstance(json.loads(body)["state"], bool)


def _write_module(tmp_path: Path, source: str) -> str:
    name = f"asgi_lifespan_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(source)
    return name


FAILING_MODULE = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "cache warm-up failed"})
"""


def test_cli_startup_failure_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    module = _write_module(tmp_path, FAILING_MODULE)
    argv = [sys.executable, "-m", "dualgate", "serve", f"{module}:app", "--lifespan", "on"]
    argv += ["--port", "0", "--app-dir", str(tmp_path)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=SOCKET_TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("dualgate: error:")]
    assert len(errors) == 1, result.stderr
    assert "cache warm-up failed" in errors[0]
    assert "Traceback" not in result.stderr, result.stderr
    assert "Serving" not in result.stderr, result.stderr


# -- interfaces ----------------------------------------------------------------------------


class Asgi2App:
    """An ASGI 2 'double callable': the class is called with the scope, the instance awaited."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await json_response(send, {"interface": "asgi2", "path": self.scope["path"]})


@pytest.mark.parametrize("interface", ["auto", "asgi"])
def test_asgi2_double_callable_is_served(serve: ServeFactory, interface: str) -> None:
    server = serve(Asgi2App, interface=interface)
    status, _, body = request(server.port, b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body) == {"interface": "asgi2", "path": "/two"}


class DualApp:
    """Callable both ways: (environ, start_response) as WSGI, (scope, receive, send) as ASGI.

    `__call__` is not a coroutine function, so an ASGI server would take it for an ASGI 2 double
    callable; asgiref's marker says it is a single callable.
    """

    _asgi_single_callable = True

    def __call__(self, *args: Any) -> Any:
        if len(args) == 2:
            _environ, start_response = args
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return [b"wsgi"]
        return self.asgi(*args)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message: Message = await receive()
            await send({"type": message["type"] + ".complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
        )
        await send({"type": "http.response.body", "body": b"asgi"})


@pytest.mark.parametrize(
    ("interface", "expected"), [("auto", b"wsgi"), ("wsgi", b"wsgi"), ("asgi", b"asgi")]
)
def test_interface_setting_forces_how_the_app_is_called(
    serve: ServeFactory, interface: str, expected: bytes
) -> None:
    server = serve(DualApp(), interface=interface)
    status, _, body = request(server.port, GET)
    assert (status, body) == (b"HTTP/1.1 200 OK", expected)
