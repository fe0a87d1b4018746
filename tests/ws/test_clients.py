"""Clients written by others against dualgate: the `websockets` library, Node's built-in
WebSocket, a Starlette app with HTTP and WebSocket routes, and mixed --mount from the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests.conftest import (
    SOCKET_TIMEOUT,
    Reader,
    Receive,
    Scope,
    Send,
    ServeFactory,
    ServerProcess,
    connect,
)
from tests.ws_support import Recorder, echo_app, is_disconnect, upgrade_request, websocket_app

NODE = shutil.which("node") or "/usr/bin/node"


# -- the websockets library -------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_websockets_library_echo_compression_ping_and_close(serve: ServeFactory, loop: str) -> None:
    recorder = Recorder()
    port = serve(echo_app(recorder, subprotocol="chat.v2"), loop=loop).port
    with ws_connect(
        f"ws://127.0.0.1:{port}/echo",
        subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")],
        open_timeout=SOCKET_TIMEOUT,
        close_timeout=SOCKET_TIMEOUT,
        max_size=None,
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert extensions.startswith("permessage-deflate")
        ws.send("bonjour ✓")
        assert ws.recv(timeout=SOCKET_TIMEOUT) == "bonjour ✓"
        big = os.urandom(1024 * 1024)
        ws.send(big)
        assert ws.recv(timeout=SOCKET_TIMEOUT) == big
        ws.send(["frag", "ment", "ed"])  # one message in three frames
        assert ws.recv(timeout=SOCKET_TIMEOUT) == "fragmented"
        assert ws.ping(b"hi").wait(SOCKET_TIMEOUT)
        ws.close(4100, "done here")
    disconnect = recorder.until(is_disconnect)
    assert (disconnect["code"], disconnect["reason"]) == (4100, "done here")


def test_websockets_library_sees_the_server_close_and_a_denial(serve: ServeFactory) -> None:
    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"] == "/denied":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4002, "reason": "go away"})

    port = serve(websocket_app(handler)).port
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=SOCKET_TIMEOUT) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=SOCKET_TIMEOUT)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "go away")
    with pytest.raises(InvalidStatus) as denied:
        ws_connect(f"ws://127.0.0.1:{port}/denied", open_timeout=SOCKET_TIMEOUT)
    assert denied.value.response.status_code == 403


# -- Node's built-in WebSocket (undici), a client in another language ------------------------

NODE_CLIENT = """
const [url] = process.argv.slice(2);
const ws = new WebSocket(url, ["node-proto"]);
ws.binaryType = "arraybuffer";
const seen = [];
const timer = setTimeout(() => {
  console.log(JSON.stringify({error: "timeout", seen}));
  process.exit(2);
}, 10000);
ws.onopen = () => {
  ws.send("héllo from node");
  ws.send(new Uint8Array([0, 1, 2, 255]));
  ws.send("x".repeat(100000));
};
ws.onmessage = (event) => {
  const data = event.data;
  if (typeof data === "string") seen.push({text: data.length > 50 ? data.length : data});
  else seen.push({bytes: Array.from(new Uint8Array(event.data))});
  if (seen.length === 3) ws.close(4001, "node says bye");
};
ws.onclose = (event) => {
  clearTimeout(timer);
  console.log(JSON.stringify({seen, code: event.code, reason: event.reason, clean: event.wasClean,
                              protocol: ws.protocol, extensions: ws.extensions}));
};
ws.onerror = (event) => console.log(JSON.stringify({error: String(event.message)}));
"""


def test_node_builtin_websocket_client(serve: ServeFactory, tmp_path: Path) -> None:
    recorder = Recorder()
    port = serve(echo_app(recorder, subprotocol="node-proto")).port
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT)
    done = subprocess.run(
        [NODE, "--experimental-websocket", str(script), f"ws://127.0.0.1:{port}/node"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seen"] == [
        {"text": "héllo from node"},
        {"bytes": [0, 1, 2, 255]},
        {"text": 100000},
    ]
    assert (result["code"], result["reason"], result["clean"]) == (4001, "node says bye", True)
    assert result["protocol"] == "node-proto"
    disconnect = recorder.until(is_disconnect)
    assert (disconnect["code"], disconnect["reason"]) == (4001, "node says bye")


# -- Starlette: HTTP and WebSocket routes under one server -----------------------------------


def starlette_app() -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {request.url.path}")

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive_text()
                await websocket.send_text(f"{websocket.path_params['room']}: {message}")
        except WebSocketDisconnect as gone:
            websocket.app.state.closes.append(gone.code)

    app = Starlette(routes=[Route("/hello", hello), WebSocketRoute("/chat/{room}", chat)])
    app.state.closes = []
    return app


def test_starlette_http_and_websocket_routes(serve: ServeFactory) -> None:
    app = starlette_app()
    port = serve(app).port
    response = httpx.get(f"http://127.0.0.1:{port}/hello", timeout=SOCKET_TIMEOUT)
    assert (response.status_code, response.text) == (200, "hello /hello")
    with ws_connect(f"ws://127.0.0.1:{port}/chat/lobby", open_timeout=SOCKET_TIMEOUT) as ws:
        ws.send("hi all")
        assert ws.recv(timeout=SOCKET_TIMEOUT) == "lobby: hi all"
        ws.close(1000)
    with pytest.raises(InvalidStatus) as missing:
        ws_connect(f"ws://127.0.0.1:{port}/nowhere", open_timeout=SOCKET_TIMEOUT)
    assert missing.value.response.status_code == 403  # Starlette closes before accepting
    with connect(port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert Reader(sock).read_response()[2] == b"hello /hello"  # still serving HTTP
    for _ in range(100):
        if app.state.closes:
            break
        time.sleep(0.02)
    assert app.state.closes == [1000]


# -- the CLI: --mount with a WSGI app beside, and wsproto missing ----------------------------

MOUNTED_ASGI = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send",
                "text": f"{scope['root_path']} {scope['path']} {message['text']}"})
    await receive()
"""

MOUNTED_WSGI = """
def application(environ, start_response):
    body = ("wsgi " + environ["PATH_INFO"]).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_cli_mount_routes_websockets_to_asgi_beside_a_wsgi_app(tmp_path: Path) -> None:
    name = f"mounted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}_asgi.py").write_text(MOUNTED_ASGI)
    (tmp_path / f"{name}_wsgi.py").write_text(MOUNTED_WSGI)
    argv = [sys.executable, "-m", "dualgate", "serve", "--port", "0", "--app-dir", str(tmp_path)]
    argv += ["--mount", f"/ws={name}_asgi:app", "--mount", f"/={name}_wsgi:application"]
    with ServerProcess(argv, cwd=tmp_path) as server:
        port = server.wait_for_port()
        with ws_connect(f"ws://127.0.0.1:{port}/ws/room/1", open_timeout=SOCKET_TIMEOUT) as ws:
            ws.send("hi")
            assert ws.recv(timeout=SOCKET_TIMEOUT) == "/ws /ws/room/1 hi"
        with connect(port) as sock:
            sock.sendall(upgrade_request("/other"))
            status, _, body = Reader(sock).read_response()
            assert (status, body) == (b"HTTP/1.1 200 OK", b"wsgi /other")


# Runs the CLI as if wsproto were not installed: an import of it raises ImportError.
HIDE_WSPROTO = (
    "import sys; sys.modules['wsproto'] = None; from dualgate.cli import main; sys.exit(main())"
)


def test_without_wsproto_a_websocket_gets_400_and_startup_says_why(tmp_path: Path) -> None:
    name = f"nows_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MOUNTED_ASGI)
    argv = [sys.executable, "-c", HIDE_WSPROTO, "serve", f"{name}:app", "--port", "0"]
    argv += ["--app-dir", str(tmp_path)]
    with ServerProcess(argv, cwd=tmp_path) as server:
        port = server.wait_for_port()
        with connect(port) as sock:
            sock.sendall(upgrade_request("/ws"))
            status, _, body = Reader(sock).read_response()
        assert status == b"HTTP/1.1 400 Bad Request"
        assert b"pip install 'dualgate[ws]'" in body
    said = [line for line in server.stderr if "wsproto" in line]
    assert len(said) == 1 and "WebSocket requests get an HTTP 400" in said[0], server.stderr


def test_ws_wsproto_without_wsproto_stops_at_startup(tmp_path: Path) -> None:
    name = f"nows_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MOUNTED_ASGI)
    argv = [sys.executable, "-c", HIDE_WSPROTO, "serve", f"{name}:app", "--port", "0"]
    argv += ["--app-dir", str(tmp_path), "--ws", "wsproto"]
    done = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 2
    assert "--ws wsproto: WebSockets need wsproto" in done.stderr
