"""A Flask app mounted in a Starlette app through dualgate.WSGIMiddleware, served by dualgate and
by uvicorn (each in a subprocess), with a 200 MB streamed upload and a 200 MB streamed download
in bounded server memory.

The applications live at module level so the server subprocesses import them from this file:
`python -m dualgate serve tests.wsgi.test_middleware_flask:app` (or uvicorn) with the repository
as --app-dir.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dualgate import WSGIMiddleware
from tests.conftest import SOCKET_TIMEOUT, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
TRANSFER = 200 * MB
BLOCK = 64 * 1024
# Deterministic content both ends can produce and check without holding it.
PATTERN = bytes(range(256)) * (BLOCK // 256)
# Peak RSS growth allowed while 200 MB go each way.
RSS_BUDGET_KB = 100 * 1024

flask_app = flask.Flask(__name__)


@flask_app.get("/hello")
def flask_hello() -> Any:
    return flask.jsonify(
        script_root=flask.request.script_root,
        path=flask.request.path,
        query=flask.request.args.to_dict(),
    )


@flask_app.post("/upload")
def flask_upload() -> Any:
    stream = flask.request.stream
    size = 0
    crc = 0
    while chunk := stream.read(BLOCK):
        size += len(chunk)
        crc = zlib.crc32(chunk, crc)
    return flask.jsonify(size=size, crc32=crc)


@flask_app.get("/download")
def flask_download() -> flask.Response:
    size = int(flask.request.args["size"])

    def blocks() -> Iterator[bytes]:
        left = size
        while left > 0:
            block = PATTERN[: min(BLOCK, left)]
            left -= len(block)
            yield block

    return flask.Response(
        blocks(),
        mimetype="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


async def ping(request: Request) -> Response:
    return JSONResponse({"pong": True, "path": request.url.path})


app = Starlette(
    routes=[
        Route("/ping", ping),
        Mount("/flask", app=WSGIMiddleware(flask_app)),
    ]
)


def _server_argv(kind: str) -> list[str]:
    target = "tests.wsgi.test_middleware_flask:app"
    if kind == "dualgate":
        return [sys.executable, "-m", "dualgate", "serve", target, "--port", "0"]
    return [sys.executable, "-m", "uvicorn", target, "--port", "0", "--host", "127.0.0.1"]


@pytest.fixture(params=["dualgate", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    kind = str(request.param)
    argv = [*_server_argv(kind), "--app-dir", str(ROOT), "--no-access-log"]
    with ServerProcess(argv, cwd=ROOT) as process:
        yield process


def test_flask_under_starlette_routes(server: ServerProcess) -> None:
    port = server.wait_for_port()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=SOCKET_TIMEOUT) as client:
        assert client.get("/ping").json() == {"pong": True, "path": "/ping"}
        response = client.get("/flask/hello", params={"q": "a b"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"script_root": "/flask", "path": "/hello", "query": {"q": "a b"}}
        assert client.get("/flask/missing").status_code == 404
        assert client.get("/nowhere").status_code == 404


def _upload_blocks(total: int) -> Iterator[bytes]:
    left = total
    while left > 0:
        block = PATTERN[: min(BLOCK, left)]
        left -= len(block)
        yield block


def _expected_crc(total: int) -> int:
    crc = 0
    for block in _upload_blocks(total):
        crc = zlib.crc32(block, crc)
    return crc


def test_large_upload_and_download_in_bounded_memory(
    server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    port = server.wait_for_port()
    started = time.monotonic()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=SOCKET_TIMEOUT) as client:
        # Warm up every path once, then take the baseline.
        client.post("/flask/upload", content=b"warm-up").raise_for_status()
        client.get("/flask/download", params={"size": 4 * BLOCK}).raise_for_status()
        baseline = server.status_kb("VmRSS")

        # A chunked upload generated on the fly: never held whole on either side.
        response = client.post("/flask/upload", content=_upload_blocks(TRANSFER))
        assert response.status_code == 200
        assert response.json() == {"size": TRANSFER, "crc32": _expected_crc(TRANSFER)}

        size = 0
        crc = 0
        with client.stream("GET", "/flask/download", params={"size": TRANSFER}) as download:
            assert download.status_code == 200
            assert download.headers["content-length"] == str(TRANSFER)
            for chunk in download.iter_raw(BLOCK):
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        assert size == TRANSFER
        assert crc == _expected_crc(TRANSFER)
        peak = server.status_kb("VmHWM")
    elapsed = time.monotonic() - started
    growth = peak - baseline
    report = (
        f"{request.node.callspec.params['server']}: baseline RSS {baseline / 1024:.1f} MB, "
        f"peak {peak / 1024:.1f} MB, growth {growth / 1024:.1f} MB "
        f"for {TRANSFER // MB} MB up + {TRANSFER // MB} MB down in {elapsed:.1f}s"
    )
    print(report, file=sys.stderr)
    assert growth < RSS_BUDGET_KB, report
