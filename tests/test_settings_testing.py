"""`dualgate.testing.serving`: a real server in a thread for users' own tests, used with httpx."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from dualgate.errors import AppLoadError, LifespanFailure
from dualgate.testing import serving


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_it_yields_a_base_url_that_serves_and_stops_with_no_thread_left() -> None:
    before = {t.name for t in threading.enumerate()}
    with serving(hello) as url:
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(url + "/")
        assert (response.status_code, response.text) == (200, "hello")
        assert "dualgate.testing" in {t.name for t in threading.enumerate()}
    assert {t.name for t in threading.enumerate()} <= before
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/")


def test_the_stop_is_graceful_a_request_in_flight_finishes() -> None:
    results: list[httpx.Response] = []
    with serving(hello) as url:
        client = threading.Thread(target=lambda: results.append(httpx.get(url + "/slow")))
        client.start()
        time.sleep(0.2)  # the request is in the application when the block ends
    client.join(10)
    assert [r.status_code for r in results] == [200]


async def lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                EVENTS.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


EVENTS: list[str] = []


def test_asgi_with_lifespan_and_options() -> None:
    EVENTS.clear()
    with serving(lifespan_app, header=("X-Test: 1",)) as url:
        response = httpx.get(url + "/")
        assert response.status_code == 204
        assert response.headers["x-test"] == "1"
        assert EVENTS == []
    assert EVENTS == ["shutdown"], "lifespan shutdown ran before the block ended"


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


def test_a_failure_to_start_is_raised_in_the_test() -> None:
    with (
        pytest.raises(AppLoadError, match="dualgate_absent_module"),
        serving("dualgate_absent_module:app"),
    ):
        pass
    with (
        pytest.raises(LifespanFailure, match="no database"),
        serving(failing_startup, lifespan="on"),
    ):
        pass
    # A taken port: the OSError the bind raised.
    with serving(hello) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(OSError), serving(hello, port=port):
            pass
