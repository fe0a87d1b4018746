"""dualgate behind a real nginx (tests/proxies.py), over TCP and over a unix socket, with and
without TLS at nginx: Flask's absolute URLs, Django's is_secure()/get_host(), an ASGI app,
WSGIMiddleware inside Starlette and --mount all see the client, scheme and host the browser
used, and the access log names the real client. The same forged headers sent straight to
dualgate change nothing.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from dualgate import Server, WSGIMiddleware
from tests.conftest import SOCKET_TIMEOUT, ServeFactory
from tests.edge.test_tls import recorded
from tests.proxies import CLIENT_ADDRESS, Certs, ProxyFactory, client_connect, read_all
from tests.wsgi.test_django import SETTINGS

# Sent to nginx (or straight to dualgate) from 127.0.0.2: a Host with a port, and forwarding
# headers the client made up, which must never win.
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=6.6.6.6;proto=https;host=evil.example",
}
PUBLIC_HOST = "app.example:8443"

flask_app = flask.Flask(__name__)


@flask_app.get("/where")
def where() -> Any:
    request = flask.request
    return flask.jsonify(
        url=flask.url_for("where", _external=True, q="1"),
        remote_addr=request.remote_addr,
        secure=request.is_secure,
        host=request.host,
    )


async def asgi_where(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "url": str(request.url_for("asgi_where")),
            "client": list(request.client or ()),
            "scheme": request.url.scheme,
        }
    )


starlette_app = Starlette(
    routes=[
        Route("/where", asgi_where, name="asgi_where"),
        Mount("/legacy", app=WSGIMiddleware(flask_app)),
    ]
)


# -- Django ---------------------------------------------------------------------------------


def django_where(request: Any) -> Any:
    from django.http import JsonResponse  # type: ignore[import-untyped]

    return JsonResponse(
        {
            "secure": request.is_secure(),
            "host": request.get_host(),
            "remote_addr": request.META["REMOTE_ADDR"],
            "uri": request.build_absolute_uri(),
        }
    )


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF names this module; Django reads `urlpatterns` only once it is configured.
    if name == "urlpatterns":
        from django.urls import path  # type: ignore[import-untyped]

        return [path("where", django_where)]
    raise AttributeError(name)


@pytest.fixture
def django_app() -> Iterator[Any]:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
    from django.test.utils import override_settings  # type: ignore[import-untyped]

    if not settings.configured:
        settings.configure(**SETTINGS)
        django.setup()
    hosts = ["app.example", "127.0.0.1", "localhost"]
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=hosts, MIDDLEWARE=[]):
        yield get_wsgi_application()


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def default_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests rely on the default trust list (127.0.0.1 and unix sockets)."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)


def get(port: int, path: str, tls: Certs | None = None, host: str = PUBLIC_HOST) -> Any:
    """GET `path` from 127.0.0.2 with the forged headers; the JSON body."""
    sock: socket.socket | ssl.SSLSocket = client_connect(port)
    if tls is not None:
        sock = tls.client_context().wrap_socket(sock, server_hostname="127.0.0.1")
    lines = "".join(f"{name}: {value}\r\n" for name, value in FORGED.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{lines}Connection: close\r\n\r\n"
    with sock:
        sock.sendall(request.encode())
        response = read_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), response
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return json.loads(body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


def upstream_of(server: Server, uds: Path | None) -> tuple[str, int] | str:
    return str(uds) if uds is not None else ("127.0.0.1", server.port)


TRANSPORTS = ["tcp", "unix"]


def start(serve: ServeFactory, app: Any, transport: str, tmp_path: Path, **options: Any) -> Any:
    uds = tmp_path / "app.sock" if transport == "unix" else None
    if uds is not None:
        options["uds"] = str(uds)
    return serve(app, **options), uds


# -- Flask ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_flask_behind_nginx(
    serve: ServeFactory,
    nginx_proxy: ProxyFactory,
    tls_certs: Certs,
    tmp_path: Path,
    transport: str,
) -> None:
    server, uds = start(serve, flask_app, transport, tmp_path)
    plain = nginx_proxy(upstream_of(server, uds))
    assert get(plain.port, "/where") == {
        "url": f"http://{PUBLIC_HOST}/where?q=1",
        "remote_addr": CLIENT_ADDRESS,
        "secure": False,
        "host": PUBLIC_HOST,
    }
    secure = nginx_proxy(upstream_of(server, uds), tls=tls_certs)
    assert get(secure.port, "/where", tls=tls_certs) == {
        "url": f"https://{PUBLIC_HOST}/where?q=1",
        "remote_addr": CLIENT_ADDRESS,
        "secure": True,
        "host": PUBLIC_HOST,
    }


def test_flask_straight_to_dualgate_with_forged_headers(serve: ServeFactory) -> None:
    server = serve(flask_app)
    host = f"127.0.0.1:{server.port}"
    assert get(server.port, "/where", host=host) == {
        "url": f"http://{host}/where?q=1",
        "remote_addr": CLIENT_ADDRESS,
        "secure": False,
        "host": host,
    }


# -- Django ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_django_behind_nginx(
    serve: ServeFactory,
    nginx_proxy: ProxyFactory,
    tls_certs: Certs,
    tmp_path: Path,
    django_app: Any,
    transport: str,
) -> None:
    server, uds = start(serve, django_app, transport, tmp_path)
    secure = nginx_proxy(upstream_of(server, uds), tls=tls_certs)
    assert get(secure.port, "/where", tls=tls_certs) == {
        "secure": True,
        "host": PUBLIC_HOST,
        "remote_addr": CLIENT_ADDRESS,
        "uri": f"https://{PUBLIC_HOST}/where",
    }
    plain = nginx_proxy(upstream_of(server, uds))
    assert get(plain.port, "/where")["secure"] is False


def test_django_straight_to_dualgate_with_forged_headers(
    serve: ServeFactory, django_app: Any
) -> None:
    server = serve(django_app)
    host = f"127.0.0.1:{server.port}"
    assert get(server.port, "/where", host=host) == {
        "secure": False,
        "host": host,
        "remote_addr": CLIENT_ADDRESS,
        "uri": f"http://{host}/where",
    }


# -- ASGI, WSGIMiddleware, --mount ------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_asgi_and_wsgi_middleware_behind_nginx(
    serve: ServeFactory,
    nginx_proxy: ProxyFactory,
    tls_certs: Certs,
    tmp_path: Path,
    transport: str,
) -> None:
    """WSGIMiddleware needs nothing of its own: it builds the environ from the ASGI scope,
    where dualgate put what nginx forwarded."""
    server, uds = start(serve, starlette_app, transport, tmp_path)
    secure = nginx_proxy(upstream_of(server, uds), tls=tls_certs)
    assert get(secure.port, "/where", tls=tls_certs) == {
        "url": f"https://{PUBLIC_HOST}/where",
        "client": [CLIENT_ADDRESS, 0],  # nginx forwards no client port
        "scheme": "https",
    }
    assert get(secure.port, "/legacy/where", tls=tls_certs) == {
        "url": f"https://{PUBLIC_HOST}/legacy/where?q=1",
        "remote_addr": CLIENT_ADDRESS,
        "secure": True,
        "host": PUBLIC_HOST,
    }


def test_mounts_behind_nginx(
    serve: ServeFactory, nginx_proxy: ProxyFactory, tls_certs: Certs
) -> None:
    root = Path(__file__).resolve().parents[2]
    server = serve(
        None,
        mount=(
            f"/flask={__name__}:flask_app",
            f"/starlette={__name__}:starlette_app",
        ),
        app_dir=str(root),
    )
    secure = nginx_proxy(("127.0.0.1", server.port), tls=tls_certs)
    assert get(secure.port, "/flask/where", tls=tls_certs)["url"] == (
        f"https://{PUBLIC_HOST}/flask/where?q=1"
    )
    assert get(secure.port, "/starlette/where", tls=tls_certs) == {
        "url": f"https://{PUBLIC_HOST}/starlette/where",
        "client": [CLIENT_ADDRESS, 0],
        "scheme": "https",
    }
    assert get(secure.port, "/starlette/legacy/where", tls=tls_certs)["remote_addr"] == (
        CLIENT_ADDRESS
    )


def _info(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records if record.levelno == logging.INFO]


def test_access_log_names_the_real_client(serve: ServeFactory, nginx_proxy: ProxyFactory) -> None:
    server = serve(flask_app, access_log=True)
    proxy = nginx_proxy(("127.0.0.1", server.port))
    with recorded("dualgate.access") as records:
        get(proxy.port, "/where")
        get(server.port, "/where", host="x")
        # The line is logged on the loop just after the response is written, so the client can
        # read the answer first: wait for it (bounded) rather than race it.
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while len(_info(records)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = _info(records)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f'{CLIENT_ADDRESS} "GET /where HTTP/1.1" 200 '), lines
    # Straight from the client: its own address and port, whatever it forged.
    assert lines[1].startswith(f"{CLIENT_ADDRESS}:"), lines
    assert "6.6.6.6" not in "".join(lines)
