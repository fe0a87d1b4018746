"""HTTP/2 over real sockets, spoken by clients written by others: curl, httpx, nghttp and
Node's http2 module, to a WSGI and an ASGI application alike; and HTTP/1.1 on the same port."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualgate import Server
from tests.conftest import running_server
from tests.h2.apps import asgi_app, big_body, wsgi_app
from tests.proxies import Certs, make_certs

TIMEOUT = 20.0
APPS = {"wsgi": wsgi_app, "asgi": asgi_app}


@pytest.fixture(scope="module", params=sorted(APPS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with running_server(APPS[request.param], http2="on") as server:
        yield server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("h2-certs"))


@pytest.fixture(scope="module", params=sorted(APPS))
def tls_server(request: pytest.FixtureRequest, certs: Certs) -> Iterator[Server]:
    with running_server(
        APPS[request.param],
        http2="on",
        ssl_certfile=str(certs.server_cert_file),
        ssl_keyfile=str(certs.server_key_file),
    ) as server:
        yield server


def port(server: Server) -> int:
    return int(server.addresses[0][1])


def run(*argv: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


# -- curl -----------------------------------------------------------------------------------


def test_curl_prior_knowledge(server: Server) -> None:
    url = f"http://127.0.0.1:{port(server)}/info"
    out = run("curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", url)
    body, version = out.rsplit(b"\n", 1)
    assert version == b"2"
    assert body == f"HTTP/2 127.0.0.1:{port(server)} http".encode()


def test_curl_upload_and_download_larger_than_the_windows(server: Server, tmp_path: Path) -> None:
    upload = big_body(3_000_000)
    (tmp_path / "up").write_bytes(upload)
    base = f"http://127.0.0.1:{port(server)}"
    out = run("curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{tmp_path / 'up'}",
              f"{base}/echo")  # fmt: skip
    assert out == f"{len(upload)} {hashlib.sha256(upload).hexdigest()}".encode()
    out = run("curl", "-sS", "--http2-prior-knowledge", f"{base}/big?5000000")
    assert out == big_body(5_000_000)


def test_curl_over_tls_negotiates_h2_by_alpn_and_http11_still(
    tls_server: Server, certs: Certs
) -> None:
    url = f"https://127.0.0.1:{port(tls_server)}/info"
    for flag, version, protocol in (
        ("--http2", b"2", b"HTTP/2"),
        ("--http1.1", b"1.1", b"HTTP/1.1"),
    ):
        out = run("curl", "-sS", flag, "--cacert", str(certs.ca_file), "-w", "\n%{http_version}",
                  url)  # fmt: skip
        body, got = out.rsplit(b"\n", 1)
        assert got == version
        assert body == protocol + f" 127.0.0.1:{port(tls_server)} https".encode()


def test_http11_is_still_served_on_the_same_port(server: Server) -> None:
    url = f"http://127.0.0.1:{port(server)}/info"
    out = run("curl", "-sS", "--http1.1", "-w", "\n%{http_version}", url)
    assert out == f"HTTP/1.1 127.0.0.1:{port(server)} http\n1.1".encode()


# -- httpx ----------------------------------------------------------------------------------


def test_httpx_concurrent_streams_on_one_connection(server: Server) -> None:
    base = f"http://127.0.0.1:{port(server)}"
    # Uploads within one window at once: httpcore's HTTP/2 client may stall its own uploads
    # when several wait for WINDOW_UPDATE together (the server's windows were open: seen with
    # h2's state of both ends). Larger uploads at once are curl's and nghttp's, below.
    uploads = [big_body(size) for size in (0, 1, 30_000, 60_000)]
    sizes = (10, 200_000, 2_000_000)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as client:
            sends = [client.post(f"{base}/echo", content=body) for body in uploads]
            sends += [client.get(f"{base}/big?{size}") for size in sizes]
            return list(await asyncio.gather(*sends))

    responses = asyncio.run(main())
    assert {r.http_version for r in responses} == {"HTTP/2"}
    for response, body in zip(responses, uploads, strict=False):
        assert response.content == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    for response, size in zip(responses[len(uploads) :], sizes, strict=True):
        assert response.content == big_body(size)


def test_httpx_upload_larger_than_the_windows(server: Server) -> None:
    body = big_body(2_000_000)
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        response = client.post(f"http://127.0.0.1:{port(server)}/echo", content=body)
    assert response.http_version == "HTTP/2"
    assert response.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


def test_httpx_over_tls(tls_server: Server, certs: Certs) -> None:
    context = certs.client_context()
    with httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client:
        response = client.get(f"https://127.0.0.1:{port(tls_server)}/info")
    assert response.http_version == "HTTP/2"
    assert response.text == f"HTTP/2 127.0.0.1:{port(tls_server)} https"


# -- nghttp and Node ------------------------------------------------------------------------


def test_nghttp_uploads_on_several_streams_at_once(server: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{port(server)}"
    upload = big_body(1_000_000)
    (tmp_path / "up").write_bytes(upload)
    # nghttp asks each distinct URI once, all at once, each with the whole upload.
    urls = [f"{base}/echo?{n}" for n in range(4)] + [f"{base}/info"]
    out = run("nghttp", "--no-dep", "-d", str(tmp_path / "up"), *urls)
    echo = f"{len(upload)} {hashlib.sha256(upload).hexdigest()}".encode()
    assert out.count(echo) == 4
    assert out.count(f"HTTP/2 127.0.0.1:{port(server)} http".encode()) == 1


NODE_CLIENT = r"""
const http2 = require("node:http2");
const [url, path, upload] = process.argv.slice(1);
const session = http2.connect(url);
const req = session.request({":method": "POST", ":path": path});
const chunks = [];
let status = 0;
req.on("response", (headers) => { status = headers[":status"]; });
req.on("data", (chunk) => chunks.push(chunk));
req.on("end", () => {
  const body = Buffer.concat(chunks).toString();
  console.log(JSON.stringify({status, body}));
  session.close();
});
req.end(Buffer.alloc(Number(upload), 7));
"""


def test_node_http2_client(server: Server) -> None:
    out = run("node", "-e", NODE_CLIENT, f"http://127.0.0.1:{port(server)}", "/echo", "300000")
    answer: dict[str, Any] = json.loads(out)
    digest = hashlib.sha256(bytes([7]) * 300_000).hexdigest()
    assert answer == {"status": 200, "body": f"300000 {digest}"}


# -- what an application sets that HTTP/2 must not carry ------------------------------------


def test_hop_by_hop_headers_an_app_sets_are_dropped() -> None:
    with running_server(asgi_app, http2="on") as server:
        url = f"http://127.0.0.1:{port(server)}/headers"
        with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
            response = client.get(url)
    assert response.http_version == "HTTP/2"
    assert response.text.startswith("HTTP/2 ")
    names = {name.lower() for name in response.headers}
    assert names.isdisjoint({"connection", "keep-alive", "transfer-encoding", "upgrade"})
