"""A real Starlette application served by dualgate, end to end over a socket with httpx."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import SOCKET_TIMEOUT, running_server


def make_app(events: list[str]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello from lifespan", "hits": []}
        events.append("shutdown")

    async def home(request: Request) -> Response:
        request.state.hits.append(request.url.path)
        return JSONResponse(
            {
                "greeting": request.state.greeting,
                "query": dict(request.query_params),
                "hits": len(request.state.hits),
            }
        )

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["item_id"], "method": request.method})

    async def echo_json(request: Request) -> Response:
        return JSONResponse({"got": await request.json()}, status_code=201)

    async def stream(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            for number in range(5):
                yield f"line {number}\n".encode()

        return StreamingResponse(lines(), media_type="text/plain")

    async def upload(request: Request) -> Response:
        async with request.form() as form:
            upload = form["file"]
            assert isinstance(upload, UploadFile)
            digest = hashlib.sha256()
            size = 0
            while chunk := await upload.read(65536):
                digest.update(chunk)
                size += len(chunk)
            return JSONResponse(
                {
                    "name": form["name"],
                    "filename": upload.filename,
                    "size": size,
                    "sha256": digest.hexdigest(),
                }
            )

    async def raw_upload(request: Request) -> Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        return PlainTextResponse(f"{size} {digest.hexdigest()}")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/items/{item_id:int}", item, methods=["GET", "DELETE"]),
            Route("/json", echo_json, methods=["POST"]),
            Route("/stream", stream),
            Route("/upload", upload, methods=["POST"]),
            Route("/raw", raw_upload, methods=["PUT"]),
        ],
        lifespan=lifespan,
    )


def test_starlette_app_end_to_end() -> None:
    events: list[str] = []
    with (
        running_server(make_app(events), lifespan="on") as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=SOCKET_TIMEOUT) as client,
    ):
        assert events == ["startup"]

        response = client.get("/", params={"a": "1", "b": "x y"})
        assert response.status_code == 200
        assert response.json() == {
            "greeting": "hello from lifespan",
            "query": {"a": "1", "b": "x y"},
            "hits": 1,
        }
        # The per-request state is a shallow copy: the list is the lifespan's own.
        assert client.get("/").json()["hits"] == 2

        assert client.get("/items/42").json() == {"id": 42, "method": "GET"}
        assert client.delete("/items/7").json() == {"id": 7, "method": "DELETE"}
        assert client.get("/items/nope").status_code == 404
        assert client.post("/items/1").status_code == 405

        response = client.post("/json", json={"k": [1, 2, {"z": None}]})
        assert response.status_code == 201
        assert response.json() == {"got": {"k": [1, 2, {"z": None}]}}

        with client.stream("GET", "/stream") as streamed:
            assert streamed.headers["content-type"].startswith("text/plain")
            assert "content-length" not in streamed.headers
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert list(streamed.iter_lines()) == [f"line {n}" for n in range(5)]

        content = os.urandom(1_500_000)

        def pieces() -> Any:
            for start in range(0, len(content), 100_000):
                yield content[start : start + 100_000]

        response = client.put("/raw", content=pieces())  # chunked upload
        assert response.text == f"{len(content)} {hashlib.sha256(content).hexdigest()}"

        head = client.head("/")
        assert head.status_code == 200
        assert int(head.headers["content-length"]) > 0
        assert head.content == b""
        assert client.get("/").json()["hits"] == 4  # the connection is still in step
    assert events == ["startup", "shutdown"]


def test_starlette_form_and_file_upload() -> None:
    # Starlette parses forms with python-multipart (in the test extra).
    content = os.urandom(1_500_000)
    with (
        running_server(make_app([]), lifespan="on") as server,
        httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=SOCKET_TIMEOUT) as client,
    ):
        response = client.post(
            "/upload",
            data={"name": "blob"},
            files={"file": ("blob.bin", content, "application/octet-stream")},
        )
        assert response.status_code == 200
        assert response.json() == {
            "name": "blob",
            "filename": "blob.bin",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
