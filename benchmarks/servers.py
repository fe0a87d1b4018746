"""Launchers: how to start each server under test on a port, serving one MODULE:ATTR.

A launcher only builds an argv; starting, readiness and stopping live in `procs`. Servers run
with access logging off (dualgate, uvicorn) or at their default, which is off (gunicorn,
hypercorn, waitress); wsgiref's per-request log line is silenced by `wsgiref_runner`.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.procs import LOOPBACK
from benchmarks.scenarios import Scenario

Interface = Literal["wsgi", "asgi"]
PY = sys.executable


@dataclass(frozen=True)
class AppRef:
    target: str  # MODULE:ATTR
    interface: Interface


@dataclass(frozen=True)
class Options:
    threads: int | None  # None: each server's own default
    workdir: Path  # where a launcher may write a config file
    stream_bytes: int
    certfile: Path | None = None  # the one certificate (chain) every TLS server serves
    keyfile: Path | None = None
    processes: int = 1  # worker processes, for servers that are `multi`


Build = Callable[[AppRef, int, Options], list[str]]
# The flags that make a server speak TLS with a certificate and key.
TLSFlags = Callable[[Path, Path], list[str]]


@dataclass(frozen=True)
class Server:
    name: str
    serves: frozenset[Literal["wsgi", "asgi", "adapter", "websocket"]]
    requires: tuple[str, ...]  # importable modules, checked with importlib.util.find_spec
    build: Build
    about: str
    baseline: bool = False
    adapter: str = ""  # for adapter servers: the prefix of the attribute in apps.adapters
    probe: Callable[[], str | None] | None = None  # extra availability check: why not, or None
    multi: bool = False  # serves the scenarios with several worker processes
    tls: TLSFlags | None = None  # None: the server cannot serve TLS scenarios
    opt_in: bool = False  # runs only when named in --servers (a variant, not a competitor)

    def app_for(self, scenario: Scenario) -> AppRef | None:
        """What this server serves for a scenario, or None when the scenario is not for it."""
        if scenario.websocket:
            if scenario.asgi is None or "websocket" not in self.serves:
                return None
            return AppRef(scenario.asgi, "asgi")
        if scenario.wsgi is None or (scenario.tls and self.tls is None):
            return None
        if scenario.processes > 1 and not (self.multi or self.baseline):
            return None
        if self.baseline:
            return AppRef(scenario.wsgi, "wsgi")
        if "adapter" in self.serves:
            if not scenario.adapters:
                return None
            return AppRef(f"benchmarks.apps.adapters:{self.adapter}_{scenario.name}", "asgi")
        if scenario.asgi is not None:
            return AppRef(scenario.asgi, "asgi") if "asgi" in self.serves else None
        return AppRef(scenario.wsgi, "wsgi") if "wsgi" in self.serves else None

    def argv(self, app: AppRef, port: int, opts: Options, tls: bool) -> list[str]:
        argv = self.build(app, port, opts)
        if tls:
            assert self.tls is not None and opts.certfile and opts.keyfile
            argv += self.tls(opts.certfile, opts.keyfile)
        return argv

    def unavailable(self) -> str | None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"not installed: {', '.join(missing)}"
        return self.probe() if self.probe else None


@functools.cache
def _dualgate_help() -> str | None:
    """`dualgate serve --help`, or None when the CLI cannot run (not written yet, or broken)."""
    try:
        done = subprocess.run(
            [PY, "-m", "dualgate", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _probe_dualgate() -> str | None:
    if _dualgate_help() is None:
        return "`python -m dualgate serve --help` fails (CLI not available yet?)"
    return None


def _probe_dualgate_uvloop() -> str | None:
    text = _dualgate_help()
    if text is None:
        return _probe_dualgate()
    if "uvloop" not in text:
        return "the dualgate CLI has no `--loop uvloop`"
    return None


def _probe_dualgate_metrics() -> str | None:
    text = _dualgate_help()
    if text is None:
        return _probe_dualgate()
    if "--metrics-address" not in text:
        return "the dualgate CLI has no `--metrics-address`"
    return None


def _dualgate(loop: str, metrics: bool = False) -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        argv = [PY, "-m", "dualgate", "serve", app.target, "--host", LOOPBACK, "--port", str(port)]
        argv += ["--no-access-log", "--interface", app.interface]
        if metrics:
            # Every figure counted, a metrics listener on a free port, and the health answer.
            argv += ["--metrics-address", f"{LOOPBACK}:0", "--health-path", "/healthz"]
        if "--loop" in (_dualgate_help() or ""):
            argv += ["--loop", loop]
        if opts.threads is not None:
            argv += ["--threads", str(opts.threads)]
        if opts.processes > 1:
            argv += ["--workers", str(opts.processes)]
        return argv

    return build


def _wsgiref(app: AppRef, port: int, opts: Options) -> list[str]:
    return [PY, "-m", "benchmarks.wsgiref_runner", app.target, "--port", str(port)]


def _waitress(app: AppRef, port: int, opts: Options) -> list[str]:
    threads = opts.threads or 4
    argv = [PY, "-m", "waitress", f"--host={LOOPBACK}", f"--port={port}"]
    return [*argv, f"--threads={threads}", app.target]


def _gunicorn(worker: str) -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        # One worker process: every server gets the same single core, where more processes
        # would only add context switches. Scenarios with several processes say how many.
        argv = [PY, "-m", "gunicorn", f"--workers={opts.processes}", f"--worker-class={worker}"]
        argv += [f"--bind={LOOPBACK}:{port}", "--log-level=warning"]
        if worker == "gthread":
            argv.append(f"--threads={opts.threads or 4}")
        return [*argv, app.target]

    return build


def _uvicorn(app: AppRef, port: int, opts: Options) -> list[str]:
    argv = [PY, "-m", "uvicorn", app.target, "--host", LOOPBACK, "--port", str(port)]
    argv += ["--http", "h11", "--loop", "asyncio", "--no-access-log", "--log-level", "warning"]
    if opts.processes > 1:
        argv += ["--workers", str(opts.processes)]
    if app.interface == "wsgi":
        return [*argv, "--interface", "wsgi", "--lifespan", "off"]
    return [*argv, "--interface", "asgi3"]


def _uvicorn_ws(implementation: str) -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        argv = [PY, "-m", "uvicorn", app.target, "--host", LOOPBACK, "--port", str(port)]
        argv += ["--http", "h11", "--loop", "asyncio", "--ws", implementation]
        return [*argv, "--no-access-log", "--log-level", "warning", "--interface", "asgi3"]

    return build


def _hypercorn(app: AppRef, port: int, opts: Options) -> list[str]:
    # Hypercorn's WSGI mode buffers the whole request body and refuses more than 16 MiB unless
    # told otherwise, which is only possible through a config file.
    config = opts.workdir / "hypercorn.toml"
    config.write_text(f"wsgi_max_body_size = {max(opts.stream_bytes * 2, 16 * 1024 * 1024)}\n")
    return [
        PY,
        "-m",
        "hypercorn",
        f"--bind={LOOPBACK}:{port}",
        f"--config={config}",
        "--workers=1",
        f"{app.interface}:{app.target}",
    ]


def _cert_key_flags(cert: str, key: str) -> TLSFlags:
    def flags(certfile: Path, keyfile: Path) -> list[str]:
        return [cert, str(certfile), key, str(keyfile)]

    return flags


def _cert_key_equals(certfile: Path, keyfile: Path) -> list[str]:
    return [f"--certfile={certfile}", f"--keyfile={keyfile}"]


_SSL_FLAGS = _cert_key_flags("--ssl-certfile", "--ssl-keyfile")  # dualgate and uvicorn alike


def _adapter(name: str, module: str) -> Server:
    return Server(
        name=f"uvicorn+{name}",
        serves=frozenset({"adapter"}),
        requires=("uvicorn", module),
        build=_uvicorn,
        about=f"uvicorn (h11, asyncio) serving the WSGI app through {module} WSGI-to-ASGI",
        adapter=name,
    )


SERVERS = (
    Server(
        "wsgiref",
        frozenset({"wsgi"}),
        (),
        _wsgiref,
        "stdlib wsgiref.simple_server.make_server: single thread, HTTP/1.0, the baseline",
        baseline=True,
        tls=_cert_key_flags("--certfile", "--keyfile"),
    ),
    Server(
        "dualgate",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("dualgate", "h11"),
        _dualgate("asyncio"),
        "dualgate with the stdlib asyncio loop",
        probe=_probe_dualgate,
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "dualgate-uvloop",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("dualgate", "h11", "uvloop"),
        _dualgate("uvloop"),
        "dualgate with uvloop",
        probe=_probe_dualgate_uvloop,
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "dualgate-metrics",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("dualgate", "h11"),
        _dualgate("asyncio", metrics=True),
        "dualgate (asyncio) with --metrics-address and --health-path: what metrics cost",
        probe=_probe_dualgate_metrics,
        multi=True,
        tls=_SSL_FLAGS,
        opt_in=True,
    ),
    Server(
        "waitress",
        frozenset({"wsgi"}),
        ("waitress",),
        _waitress,
        "waitress, 4 threads unless --threads",
    ),
    Server(
        "gunicorn-sync",
        frozenset({"wsgi"}),
        ("gunicorn",),
        _gunicorn("sync"),
        "gunicorn, one sync worker (no keep-alive)",
        tls=_cert_key_equals,
    ),
    Server(
        "gunicorn-gthread",
        frozenset({"wsgi"}),
        ("gunicorn",),
        _gunicorn("gthread"),
        "gunicorn, one gthread worker with 4 threads unless --threads",
        multi=True,
        tls=_cert_key_equals,
    ),
    Server(
        "uvicorn",
        frozenset({"wsgi", "asgi"}),
        ("uvicorn", "h11"),
        _uvicorn,
        "uvicorn --http h11 --loop asyncio; WSGI apps through its --interface wsgi",
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "uvicorn-websockets",
        frozenset({"websocket"}),
        ("uvicorn", "h11", "websockets"),
        _uvicorn_ws("websockets"),
        "uvicorn --ws websockets (the websockets library, C-accelerated masking) --loop asyncio",
    ),
    Server(
        "uvicorn-websockets-sansio",
        frozenset({"websocket"}),
        ("uvicorn", "h11", "websockets"),
        _uvicorn_ws("websockets-sansio"),
        "uvicorn --ws websockets-sansio --loop asyncio: what --ws websockets is to become",
    ),
    Server(
        "uvicorn-wsproto",
        frozenset({"websocket"}),
        ("uvicorn", "h11", "wsproto"),
        _uvicorn_ws("wsproto"),
        "uvicorn --ws wsproto --loop asyncio: the same framing library as dualgate",
    ),
    Server(
        "hypercorn",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("hypercorn",),
        _hypercorn,
        "hypercorn, asyncio worker; WSGI apps through its wsgi: mode; wsproto for WebSockets",
        tls=_cert_key_equals,
    ),
    _adapter("dualgate", "dualgate"),
    _adapter("a2wsgi", "a2wsgi"),
    _adapter("asgiref", "asgiref"),
)

BY_NAME = {s.name: s for s in SERVERS}
