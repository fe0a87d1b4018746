"""The scenarios: which app each server serves, and how the load is shaped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["http", "download", "upload", "floor", "ws-echo", "ws-download", "ws-upload"]
WEBSOCKET_KINDS = ("ws-echo", "ws-download", "ws-upload")


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    wsgi: str | None  # MODULE:ATTR served by WSGI servers (and by wsgiref, the baseline)
    asgi: str | None  # MODULE:ATTR served by ASGI servers; set only for ASGI scenarios
    quick: bool  # part of a --quick run
    adapters: bool  # also served through the WSGI-to-ASGI adapters under one ASGI server
    about: str
    path: str = "/"
    # Worker processes per server. Above 1, only servers that can run several serve it (and
    # the baseline), and neither they nor the load generator are pinned to a core.
    processes: int = 1
    # Ratios are to this server's figure in the same round (wsgiref cannot serve WebSockets).
    baseline: str = "wsgiref"

    @property
    def websocket(self) -> bool:
        return self.kind in WEBSOCKET_KINDS

    tls: bool = False  # served over HTTPS, with one certificate for every server


SCENARIOS = (
    Scenario(
        "hello",
        "http",
        "benchmarks.apps.hello:application",
        None,
        quick=True,
        adapters=True,
        about="the seed app: a 20-byte body, so the cost is the server's own per-request work",
    ),
    Scenario(
        "64k",
        "http",
        "benchmarks.apps.body64k:application",
        None,
        quick=True,
        adapters=False,
        about="a 64 KiB body: more than one socket write, so buffering and copying show",
    ),
    Scenario(
        "flask",
        "http",
        "benchmarks.apps.flask_app:app",
        None,
        quick=True,
        adapters=False,
        about="a small Flask JSON route: how much a server matters once a framework runs",
    ),
    Scenario(
        "asgi-hello",
        "http",
        # wsgiref cannot serve ASGI; it serves the WSGI hello, the same bytes, as the baseline.
        "benchmarks.apps.hello:application",
        "benchmarks.apps.asgi_hello:app",
        quick=True,
        adapters=False,
        about="the hello response from an ASGI 3 app: the native ASGI path",
    ),
    Scenario(
        "tls-hello",
        "http",
        "benchmarks.apps.hello:application",
        None,
        quick=False,
        adapters=False,
        about="the hello app over HTTPS (the same certificate for every server): what TLS adds "
        "per request; close-c10 pays a full handshake per request",
        tls=True,
    ),
    Scenario(
        "tls-asgi-hello",
        "http",
        # wsgiref serves the WSGI hello over TLS as the baseline, as for asgi-hello.
        "benchmarks.apps.hello:application",
        "benchmarks.apps.asgi_hello:app",
        quick=False,
        adapters=False,
        about="the ASGI hello over HTTPS: the native ASGI path with TLS",
        tls=True,
    ),
    Scenario(
        "download",
        "download",
        "benchmarks.apps.download:application",
        None,
        quick=False,
        adapters=True,
        about="a 200 MiB body yielded in 64 KiB chunks and read fully: streaming and flow control",
    ),
    Scenario(
        "upload",
        "upload",
        "benchmarks.apps.upload:application",
        None,
        quick=False,
        adapters=True,
        about="a 200 MiB request body read from wsgi.input in 64 KiB pieces: input streaming",
    ),
    Scenario(
        "workers",
        "http",
        "benchmarks.apps.hello:application",
        None,
        quick=False,
        adapters=False,
        about="the hello app from 2 worker processes per server (dualgate --workers 2, gunicorn "
        "-w 2 gthread, uvicorn --workers 2), every process and the load generator sharing both "
        "CPUs unpinned; wsgiref stays one process",
        processes=2,
    ),
    Scenario(
        "workers-asgi",
        "http",
        "benchmarks.apps.hello:application",
        "benchmarks.apps.asgi_hello:app",
        quick=False,
        adapters=False,
        about="the ASGI hello from 2 worker processes per server (dualgate --workers 2, uvicorn "
        "--workers 2), unpinned as `workers`",
        processes=2,
    ),
    Scenario(
        "ws-echo",
        "ws-echo",
        None,
        "benchmarks.apps.ws_echo:app",
        quick=True,
        adapters=False,
        about="WebSocket echo of a 32-byte text message, one round trip at a time per "
        "connection: the server's cost per message both ways",
        path="/echo",
        baseline="uvicorn-wsproto",
    ),
    Scenario(
        "ws-download",
        "ws-download",
        None,
        "benchmarks.apps.ws_echo:app",
        quick=False,
        adapters=False,
        about="200 MiB sent by the app over a WebSocket in 64 KiB binary messages: bulk "
        "throughput out, with flow control",
        path="/download",
        baseline="uvicorn-wsproto",
    ),
    Scenario(
        "ws-upload",
        "ws-upload",
        None,
        "benchmarks.apps.ws_echo:app",
        quick=False,
        adapters=False,
        about="200 MiB sent by the client over a WebSocket in 64 KiB masked binary messages "
        "and counted by the app: bulk throughput in",
        path="/upload",
        baseline="uvicorn-wsproto",
    ),
    Scenario(
        "floor",
        "floor",
        None,
        None,
        quick=True,
        adapters=False,
        about="in-process, no sockets: h11 parse of a GET plus serialising its response",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
