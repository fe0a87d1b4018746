"""HTTP/2 where dualgate is deployed, with real processes and real clients: `--workers 2` (h2c
and TLS with ALPN; both workers serve; SIGTERM to the supervisor lets a held stream finish
after GOAWAY), behind the PROXY protocol (a raw preamble then h2c or TLS; HAProxy in TCP mode
with send-proxy), a trusted proxy's headers read per stream, `--mount` (a WSGI app, an ASGI
app, and a WSGI app inside an ASGI one through WSGIMiddleware), gunicorn's arbiter, and
`--limit-max-requests` counting streams.

The applications are tests/h2/apps.py's `view_wsgi` and `view_asgi`, which answer what they saw;
the process tests copy that module next to the server they start, as `h2apps`.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dualgate import Server
from dualgate.edge.proxy_protocol import V2_SIGNATURE
from tests.conftest import running_server
from tests.h2 import apps
from tests.h2.apps import view_asgi, view_wsgi
from tests.h2.client import Client, tls_socket
from tests.h2.test_metrics import read_to_the_end
from tests.metrics.test_supervisor import metrics_port, scrape
from tests.metrics.test_units import value
from tests.processes import supervised, wait_until
from tests.procs.test_gunicorn import gunicorn, wait_for_workers
from tests.proxies import (
    CLIENT_ADDRESS,
    Certs,
    ProxyFactory,
    client_connect,
    make_certs,
)

TIMEOUT = 20.0
LARGEST_STREAM_ID = 2**31 - 1


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("h2-deploy-certs"))


def copy_apps(directory: Path) -> None:
    shutil.copy(Path(apps.__file__), directory / "h2apps.py")


def tls_flags(certs: Certs | None) -> tuple[str, ...]:
    if certs is None:
        return ()
    options = tls_options(certs)
    return ("--ssl-certfile", options["ssl_certfile"], "--ssl-keyfile", options["ssl_keyfile"])


def tls_options(certs: Certs | None) -> dict[str, Any]:
    return {} if certs is None else certs.server_options()


def connect(port: int, certs: Certs | None = None, preamble: bytes = b"") -> Client:
    """An HTTP/2 connection: the PROXY header if given, then TLS with ALPN h2 if `certs`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if preamble:
        sock.sendall(preamble)
    return Client(sock if certs is None else tls_socket(sock, certs.client_context()))


def view(client: Client, stream_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = json.loads(client.answer(stream_id))
    return seen


def views(client: Client, *paths: bytes) -> list[dict[str, Any]]:
    """Each path on a stream of its own (the client's next ids), all sent before any answer
    is read."""
    first = client.conn.get_next_available_stream_id()
    ids = [first + 2 * n for n in range(len(paths))]
    for stream_id, path in zip(ids, paths, strict=True):
        client.get(path, stream_id)
    return [view(client, stream_id) for stream_id in ids]


def port_of(server: Server) -> int:
    return int(server.addresses[0][1])


# -- --workers ------------------------------------------------------------------------------


def read_until(process: subprocess.Popen[bytes], text: str, count: int) -> bytes:
    """What `process` printed until `text` had appeared `count` times (nghttp flushes each
    frame it prints); fails at TIMEOUT or at the end of the output."""
    assert process.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + TIMEOUT
        while seen.decode(errors="replace").count(text) < count:
            assert selector.select(max(0.0, deadline - time.monotonic())), seen.decode()
            chunk = os.read(process.stdout.fileno(), 65536)
            assert chunk, seen.decode()
            seen += chunk
    return seen


def nghttp_frames(out: str) -> tuple[list[int], int, dict[str, Any]]:
    """From `nghttp -v`: the last_stream_id of each GOAWAY received, the position of the first
    GOAWAY relative to the response head (negative: before it), and the response's body."""
    received = r"recv GOAWAY frame <[^>]*>\s*\(last_stream_id=(\d+)"
    goaways = [int(m) for m in re.findall(received, out)]
    order = out.index("recv GOAWAY") - out.index(":status: 200")
    body = re.search(r"\{\"pid\".*?\}", out)
    assert body is not None, out
    answer: dict[str, Any] = json.loads(body.group(0))
    return goaways, order, answer


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_two_workers_serve_http2_and_sigterm_lets_a_held_stream_finish(
    tmp_path: Path, tls: bool, certs: Certs
) -> None:
    copy_apps(tmp_path)
    used = certs if tls else None
    scheme = "https" if tls else "http"
    args = ("h2apps:view_wsgi", "--port", "0", "--workers", "2", "--threads", "1", "--http2", "on")
    with supervised(tmp_path, *args, *tls_flags(used)) as server:
        port = server.port()
        # The supervisor's line names the scheme its workers answer in.
        server.wait_for(rf"Supervisor \d+ listening on {scheme}://127\.0\.0\.1:{port}")
        server.wait_for("2 worker\\(s\\) ready")
        workers = server.children()
        assert len(workers) == 2
        # nghttp shows every frame it receives, the GOAWAYs of the stop among them.
        held = subprocess.Popen(
            ["nghttp", "-v", f"{scheme}://127.0.0.1:{port}/hold"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            busy = int(server.wait_for("holding in").split()[-1])
            # The held stream has its worker's only thread, so that worker stops accepting:
            # every new connection is the other one's, deterministically.
            seen = set()
            for _ in range(3):
                client = connect(port, used)
                try:
                    for answer in views(client, b"/one", b"/two"):
                        assert (answer["protocol"], answer["scheme"]) == ("HTTP/2", scheme)
                        seen.add(answer["pid"])
                finally:
                    client.close()
            assert busy not in seen and seen | {busy} == workers, (busy, seen, workers)
            mark = server.mark()
            server.signal(signal.SIGTERM)  # to the supervisor, by its pid
            # The held worker has begun its graceful stop (its GOAWAY is queued before this
            # line is logged, and goes out before the response can): let the stream finish.
            server.wait_for(rf"\[{busy}\] .*Waiting up to", after=mark)
            # Both GOAWAYs before the response: the second follows the client's PING
            # acknowledgement, and nghttp exits once its response is in, perhaps before reading
            # a GOAWAY that came after it.
            early = read_until(held, "recv GOAWAY", count=2)
            (tmp_path / "release").touch()
            out, err = held.communicate(timeout=TIMEOUT)
            out = early + out
        finally:
            if held.poll() is None:
                held.kill()
                held.wait(TIMEOUT)
        assert held.returncode == 0, err
        assert server.wait() == 0, server.stderr
    goaways, order, answer = nghttp_frames(out.decode())
    # RFC 9113 section 6.8's two steps: the largest id, then the last stream served (this one).
    stream_id = int(re.findall(r"recv \(stream_id=(\d+)\) :status: 200", out.decode())[0])
    assert goaways == [LARGEST_STREAM_ID, stream_id]
    assert order < 0, "the GOAWAY came after the response"
    assert (answer["pid"], answer["path"], answer["protocol"]) == (busy, "/hold", "HTTP/2")


def test_limit_max_requests_counts_http2_streams(tmp_path: Path) -> None:
    copy_apps(tmp_path)
    args = ("h2apps:view_wsgi", "--port", "0", "--workers", "1", "--http2", "on")
    with supervised(tmp_path, *args, "--limit-max-requests", "3") as server:
        port = server.port()
        server.wait_for("1 worker\\(s\\) ready")
        # Three streams, one after the other, on one connection: the third retires the
        # worker, whose graceful stop lets that stream finish, then closes the connection.
        client = connect(port)
        client.hide_goaways = True
        try:
            answers = [views(client, path)[0] for path in (b"/1", b"/2", b"/3")]
            client.until(lambda: False)  # until the server closes it
        finally:
            client.close()
        pids = {answer["pid"] for answer in answers}
        assert len(pids) == 1
        assert client.goaways == [(LARGEST_STREAM_ID, 0), (5, 0)]
        server.wait_for("Served 3 requests: retiring this worker")
        client = connect(port)  # taken by the replacement, once it accepts
        try:
            (after,) = views(client, b"/after")
        finally:
            client.close()
        assert after["pid"] not in pids
        assert after["pid"] in server.children()


def test_the_supervisors_metrics_add_up_every_workers_http2_figures(tmp_path: Path) -> None:
    copy_apps(tmp_path)
    args = ("h2apps:view_wsgi", "--port", "0", "--workers", "2", "--http2", "on")
    with supervised(tmp_path, *args, "--metrics-address", "127.0.0.1:0") as server:
        port, metrics = server.port(), metrics_port(server)
        server.wait_for("2 worker\\(s\\) ready")
        sent = received = 0
        for _ in range(4):
            client = connect(port)
            try:
                views(client, b"/one", b"/two")
                client.conn.close_connection()  # the server closes: every byte is counted
                client.flush()
                read_to_the_end(client)
            finally:
                client.close()
            sent, received = sent + client.sent, received + client.received

        def figures() -> tuple[float, float, float]:
            families = scrape(metrics)
            return (
                value(families["dualgate_http_requests"], "dualgate_http_requests_total",
                      http_version="2"),
                value(families["dualgate_received_bytes"], "dualgate_received_bytes_total"),
                value(families["dualgate_sent_bytes"], "dualgate_sent_bytes_total"),
            )  # fmt: skip

        # Each worker sends its figures with its heartbeat (once a second).
        wait_until(lambda: figures()[0] == 8, 10, "8 HTTP/2 requests in the sum")
        wait_until(lambda: figures() == (8, sent, received), 10, "the bytes in the sum")


# -- the PROXY protocol ---------------------------------------------------------------------

SOURCE = ("203.0.113.7", 51234)
DESTINATION = ("192.0.2.1", 443)


def proxy_v1() -> bytes:
    return f"PROXY TCP4 {SOURCE[0]} {DESTINATION[0]} {SOURCE[1]} {DESTINATION[1]}\r\n".encode()


def proxy_v2() -> bytes:
    addresses = socket.inet_aton(SOURCE[0]) + socket.inet_aton(DESTINATION[0])
    addresses += struct.pack("!HH", SOURCE[1], DESTINATION[1])
    # Version 2, PROXY; TCP over IPv4.
    return V2_SIGNATURE + bytes((0x21, 0x11)) + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
@pytest.mark.parametrize(
    ("header", "app"), [(proxy_v1, view_wsgi), (proxy_v2, view_asgi)], ids=["v1-wsgi", "v2-asgi"]
)
def test_http2_behind_a_proxy_header_sees_the_client_it_names(
    tls: bool, header: Any, app: Any, certs: Certs
) -> None:
    used = certs if tls else None
    options = tls_options(used)
    with running_server(
        app, http2="on", proxy_protocol=True, forwarded_allow_ips="127.0.0.1", **options
    ) as server:
        client = connect(port_of(server), used, preamble=header())
        try:
            answers = views(client, b"/one", b"/two")
        finally:
            client.close()
    for answer in answers:
        assert answer["client"] == list(SOURCE)
        assert answer["protocol"] == "HTTP/2"
        assert answer["scheme"] == ("https" if tls else "http")


@pytest.mark.parametrize(("tls", "send_proxy"), [(False, "v1"), (True, "v2")], ids=["h2c", "tls"])
def test_http2_through_haproxy_in_tcp_mode_with_send_proxy(
    haproxy_proxy: ProxyFactory, tls: bool, send_proxy: str, certs: Certs
) -> None:
    used = certs if tls else None
    with running_server(
        view_asgi,
        http2="on",
        proxy_protocol=True,
        forwarded_allow_ips="127.0.0.1",
        **tls_options(used),
    ) as server:
        # HAProxy passes the bytes through (TLS ends at dualgate) after its PROXY header.
        proxy = haproxy_proxy(("127.0.0.1", port_of(server)), send_proxy=send_proxy, mode="tcp")
        sock = client_connect(proxy.port)  # from 127.0.0.2
        client_port = sock.getsockname()[1]
        client = Client(sock if used is None else tls_socket(sock, used.client_context()))
        try:
            answers = views(client, b"/one", b"/two")
        finally:
            client.close()
        proxy.assert_running()
    for answer in answers:
        assert answer["client"] == [CLIENT_ADDRESS, client_port]
        assert (answer["protocol"], answer["scheme"]) == ("HTTP/2", "https" if tls else "http")


# -- forwarding headers ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def forwarding_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    app = view_wsgi if request.param == "wsgi" else view_asgi
    with running_server(
        app, http2="on", proxy_headers=True, forwarded_allow_ips="127.0.0.1"
    ) as server:
        yield server


def test_a_trusted_proxys_headers_are_read_per_stream(forwarding_server: Server) -> None:
    client = connect(port_of(forwarding_server))
    try:
        # Three streams open at once on one connection, each with its own headers.
        client.send(
            1,
            b"GET",
            b"/one",
            (b"x-forwarded-for", b"198.51.100.1"),
            (b"x-forwarded-proto", b"https"),
        )
        client.send(3, b"GET", b"/two", (b"forwarded", b'for="198.51.100.2:4711";proto=http'))
        client.send(5, b"GET", b"/three")
        one, two, three = (view(client, stream_id) for stream_id in (1, 3, 5))
    finally:
        client.close()
    assert (one["client"][0], one["scheme"]) == ("198.51.100.1", "https")
    assert (two["client"], two["scheme"]) == (["198.51.100.2", 4711], "http")
    assert (three["client"][0], three["scheme"]) == ("127.0.0.1", "http")
    assert {one["path"], two["path"], three["path"]} == {"/one", "/two", "/three"}


def test_an_untrusted_peers_forwarding_headers_are_ignored_on_every_stream() -> None:
    with running_server(
        view_asgi, http2="on", proxy_headers=True, forwarded_allow_ips="192.0.2.9"
    ) as server:
        client = connect(port_of(server))
        try:
            client.send(1, b"GET", b"/", (b"x-forwarded-for", b"198.51.100.1"))
            client.send(3, b"GET", b"/", (b"forwarded", b"for=198.51.100.2;proto=https"))
            answers = [view(client, stream_id) for stream_id in (1, 3)]
        finally:
            client.close()
    assert [(a["client"][0], a["scheme"]) for a in answers] == [("127.0.0.1", "http")] * 2


# -- --mount --------------------------------------------------------------------------------

WRAPPED = """
from dualgate import WSGIMiddleware
from h2apps import view_wsgi

app = WSGIMiddleware(view_wsgi)
"""


def test_mounts_over_http2_in_a_served_process(tmp_path: Path) -> None:
    copy_apps(tmp_path)
    (tmp_path / "wrapped.py").write_text(WRAPPED)
    mounts = ("/w=h2apps:view_wsgi", "/a=h2apps:view_asgi", "/m=wrapped:app")
    args = [arg for mount in mounts for arg in ("--mount", mount)]
    with supervised(tmp_path, "--port", "0", "--http2", "on", *args) as server:
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", server.wait_for("Serving mounts"))
        assert found is not None
        client = connect(int(found.group(1)))
        try:
            wsgi, asgi, wrapped = views(client, b"/w/x", b"/a/x", b"/m/x")
            client.get(b"/elsewhere", 7)
            client.until(lambda: 7 in client.ended)
            missing = client.statuses[7]
        finally:
            client.close()
    assert (wsgi["root"], wsgi["path"], wsgi["protocol"]) == ("/w", "/x", "HTTP/2")
    assert (asgi["root"], asgi["path"], asgi["protocol"]) == ("/a", "/a/x", "HTTP/2")
    # WSGIMiddleware inside an ASGI mount: the same split, from the ASGI scope.
    assert (wrapped["root"], wrapped["path"], wrapped["protocol"]) == ("/m", "/x", "HTTP/2")
    assert missing == b"404"


# -- gunicorn's arbiter ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_gunicorn_worker_serves_http2(tmp_path: Path, tls: bool, certs: Certs) -> None:
    copy_apps(tmp_path)
    used = certs if tls else None
    options = ["-w", "2", "--http-protocols", "h2,h1", "--max-requests", "4"]
    if used is not None:
        options += ["--certfile", str(used.server_cert_file)]
        options += ["--keyfile", str(used.server_key_file)]
    with gunicorn(tmp_path, "h2apps:view_wsgi", *options) as (process, port):
        workers = wait_for_workers(process, 2)
        client = connect(port, used)
        client.hide_goaways = True  # the worker stops gracefully after the fourth
        try:
            # gunicorn's --max-requests counts streams too: the fourth retires the worker.
            answers = views(client, b"/1", b"/2", b"/3", b"/4")
        finally:
            client.close()
        scheme = "https" if tls else "http"
        assert {(a["protocol"], a["scheme"]) for a in answers} == {("HTTP/2", scheme)}
        assert len({a["pid"] for a in answers}) == 1 and answers[0]["pid"] in workers
        process.wait_for("Autorestarting worker", timeout=TIMEOUT)
