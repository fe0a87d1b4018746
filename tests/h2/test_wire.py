"""HTTP/2 over a real socket, driven frame by frame with h2's client state machine: one slow
reader does not hold the other streams, a malformed stream is reset alone, a graceful stop lets
an in-flight stream finish, `--mount`s route streams, and stage 1's attacks (rapid reset, a
CONTINUATION flood) end their own connection while another client is still served."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from h2.errors import ErrorCodes

from dualgate import Server
from tests.conftest import running_server
from tests.h2.apps import asgi_app, big_body, wsgi_app
from tests.h2.client import Client
from tests.h2.support import raw_frame, request

TIMEOUT = 10.0
APPS = {"wsgi": wsgi_app, "asgi": asgi_app}


@pytest.fixture(scope="module", params=sorted(APPS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with running_server(APPS[request.param], http2="on") as server:
        yield server


def port(server: Server) -> int:
    return int(server.addresses[0][1])


def served(server: Server) -> bool:
    """Another client is served meanwhile, by HTTP/2 prior knowledge."""
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        response = client.get(f"http://127.0.0.1:{port(server)}/info")
    return response.http_version == "HTTP/2" and response.text.startswith("HTTP/2 ")


def test_a_slow_reader_stream_does_not_hold_the_others(server: Server) -> None:
    client = Client(port(server))
    try:
        # Stream 1: a download far larger than its window, never acknowledged by the client;
        # stream 3 must still be answered whole on the same connection.
        client.get(b"/big?3000000", 1)
        client.until(lambda: len(client.bodies.get(1, b"")) >= 60000, ack=False)
        client.get(b"/info", 3)
        client.until(lambda: 3 in client.ended, ack=False)
        assert bytes(client.bodies[3]).startswith(b"HTTP/2 ")
        assert 1 not in client.ended
        assert len(client.bodies[1]) <= 65535  # the client's window, never opened further
    finally:
        client.close()


def test_a_body_without_content_length_that_came_with_its_headers_is_read(
    server: Server,
) -> None:
    # HEADERS and DATA with END_STREAM in one write, no content-length (RFC 9113 8.1.2.6
    # makes it optional): the stream starts with its whole body already received, which
    # the application once saw as empty.
    client = Client(port(server))
    try:
        for stream_id, size in ((1, 10), (3, 40_000), (5, 0)):
            body = big_body(size)
            client.send(stream_id, b"POST", b"/echo", body=body)
            digest = hashlib.sha256(body).hexdigest()
            assert client.answer(stream_id) == f"{size} {digest}".encode()
    finally:
        client.close()


def test_a_malformed_request_resets_its_stream_alone(server: Server) -> None:
    client = Client(port(server))
    try:
        bad = [*request(b"GET", b"/info"), (b"Upper-Case", b"no")]
        client.conn.send_headers(1, bad, end_stream=True)
        client.flush()
        client.get(b"/info", 3)
        client.until(lambda: 3 in client.ended and 1 in client.resets)
        assert client.resets[1] == ErrorCodes.PROTOCOL_ERROR
        assert bytes(client.bodies[3]).startswith(b"HTTP/2 ")
        assert client.goaway is None
    finally:
        client.close()


def test_rapid_reset_over_a_socket_ends_that_connection_only(server: Server) -> None:
    client = Client(port(server))
    try:
        # Open and cancel streams as fast as they can be written (CVE-2023-44487).
        for n in range(400):
            stream_id = 1 + 2 * n
            client.conn.send_headers(stream_id, request(b"GET", b"/slow"), end_stream=True)
            client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        with contextlib.suppress(OSError):  # the server may have closed first
            client.flush()
        client.until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert served(server)


def test_a_continuation_flood_over_a_socket_ends_that_connection_only(server: Server) -> None:
    client = Client(port(server))
    try:
        # HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
        client.send_raw(raw_frame(0x1, 0x0, 1, b""))
        frame = raw_frame(0x9, 0x0, 1, b"\x00" * 16000)
        with contextlib.suppress(OSError):  # closed by the server part way: the defence
            for _ in range(200):
                client.send_raw(frame)
        client.until(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code != ErrorCodes.NO_ERROR
    finally:
        client.close()
    assert served(server)


def test_a_graceful_stop_lets_a_stream_in_flight_finish() -> None:
    # curl, not h2's client: h2's takes the first GOAWAY for the end and then refuses the
    # PING of the two-step stop (RFC 9113 section 6.8) that follows it.
    with running_server(asgi_app, http2="on", timeout_graceful_shutdown=5) as server:
        url = f"http://127.0.0.1:{port(server)}/slow"
        curl = subprocess.Popen(
            ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + TIMEOUT
        while not server.state or not server.state.metrics.h2.streams:
            assert time.monotonic() < deadline, "the request did not arrive"
            time.sleep(0.02)
        server.shutdown()
        out, err = curl.communicate(timeout=TIMEOUT)
        assert curl.returncode == 0, err
        assert out == f"HTTP/2 127.0.0.1:{port(server)} http\n2".encode()
        assert server.state.metrics.h2.goaways_sent.get("graceful") == 2


def test_mounts_route_streams() -> None:
    mounts = ("/w=tests.h2.apps:wsgi_app", "/a=tests.h2.apps:asgi_app")
    with (
        running_server(None, mount=mounts, http2="on") as server,
        httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client,
    ):
        base = f"http://127.0.0.1:{port(server)}"
        assert client.get(f"{base}/w/big?5").content == big_body(5)
        assert client.get(f"{base}/a/big?7").content == big_body(7)
        missing = client.get(f"{base}/elsewhere")
        assert (missing.status_code, missing.http_version) == (404, "HTTP/2")
