"""The ASGI handler in memory: `HTTPProtocol` over a fake transport, a real loop, no sockets.

What the wire tests (test_conformance.py) cannot see: which tasks the handler holds, and that
the scope built per request is the one the shared scope builder (asgi/scope.py) gives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dualgate.asgi.handler import ASGIHandler, build_scope
from dualgate.asgi.scope import connection_scope
from dualgate.config import Config
from dualgate.http.checks import Framing
from dualgate.http.connection import HTTPProtocol
from dualgate.http.cycle import RequestCycle, View
from dualgate.http.reader import Request
from dualgate.http.state import ServerState
from tests.conftest import Receive, Scope, Send
from tests.http.test_connection_memory import FakeTransport

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def serve(app: Any) -> tuple[ASGIHandler, HTTPProtocol, FakeTransport]:
    config = Config(app="unused:app", date_header=False, server_header=False, lifespan="off")
    handler = ASGIHandler(app, "", None, config=config)
    state = ServerState(config, handler)
    state.access_log = False
    protocol = HTTPProtocol(state, asyncio.get_running_loop())
    transport = FakeTransport()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return handler, protocol, transport


async def settle() -> None:
    """Let every ready task run to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


@pytest.mark.asyncio
async def test_a_request_task_is_held_while_it_runs_and_let_go_when_it_ends() -> None:
    release = asyncio.Event()

    async def waits(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await hello(scope, receive, send)

    handler, protocol, transport = serve(waits)
    protocol.data_received(GET)
    await settle()
    # The loop holds tasks weakly: the handler's set is what keeps a waiting one alive.
    assert len(handler._tasks) == 1
    release.set()
    await settle()
    assert transport.take().endswith(b"\r\n\r\nhi")
    assert handler._tasks == set()


@pytest.mark.asyncio
async def test_tasks_are_let_go_after_a_failure_and_after_many_requests() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/fail":
            raise RuntimeError("boom")
        await hello(scope, receive, send)

    handler, protocol, transport = serve(fails)
    protocol.data_received(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.take().startswith(b"HTTP/1.1 500 ")
    assert handler._tasks == set()
    for _ in range(20):
        protocol.data_received(GET)
        await settle()
    assert transport.take().count(b"HTTP/1.1 200 OK") == 20
    assert handler._tasks == set()


def _cycle(target: bytes, client: tuple[str, int | None] | None) -> RequestCycle:
    class Port:
        can_sendfile = False

    request = Request(
        b"GET",
        target,
        [(b"host", b"x")],
        b"1.1",
        Framing(0, False, True, b""),
        expects_continue=False,
    )
    view = View(client, ("127.0.0.1", 8000), "http", None)
    return RequestCycle(Port(), request, view, [], b"")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "root_path", "proxy_root"),
    [
        (b"/", "", None),
        (b"/a%20b/c?x=1&y=%41", "", None),
        (b"/api/items?q", "/api", None),
        (b"/items?q", "/api", None),  # a proxy stripped the root path: it is put back
        (b"/m/items", "/root/m", "/root"),
        (b"/root/m/items", "/root/m", "/root"),
        (b"/%ff%2F", "/r", ""),
        (b"*", "", None),
    ],
)
@pytest.mark.parametrize("client", [("10.0.0.1", 5000), ("10.0.0.1", None), None])
def test_the_inlined_scope_is_the_shared_builders(
    target: bytes,
    root_path: str,
    proxy_root: str | None,
    client: tuple[str, int | None] | None,
) -> None:
    cycle = _cycle(target, client)
    state = {"from_lifespan": 1}
    scope: dict[str, Any] = dict(build_scope(cycle, root_path, state, proxy_root))
    expected = connection_scope(
        "http",
        {"version": "3.0", "spec_version": "2.4"},
        "1.1",
        "http",
        target,
        cycle.request.headers,
        root_path=root_path,
        proxy_root=proxy_root,
        client=None if client is None else (client[0], client[1] or 0),
        server=cycle.server,
        state=state,
    )
    expected["method"] = "GET"
    expected["extensions"] = {"http.response.pathsend": {}}
    assert scope == expected
    assert scope["state"] is not state  # a shallow copy per request
