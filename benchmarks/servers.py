"""Launchers: how to start each server under test on a port, serving one MODULE:ATTR.

A launcher only builds an argv; starting, readiness and stopping live in `procs`. Servers run
with access logging off (dualgate, uvicorn, granian) or at their default, which is off (gunicorn,
hypercorn, waitress); wsgiref's per-request log line is silenced by `wsgiref_runner`.

Where a server picks its parser or loop by what is installed (`auto`), the launcher names one,
so a row means the same on every machine: installing httptools or gunicorn's C parser must not
quietly turn `uvicorn` or `gunicorn-gthread` into another server. The variants that use them
are rows of their own.
"""

from __future__ import annotations

import functools
import importlib.util
import re
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
def _help(*argv: str) -> str | None:
    """`python -m ARGV --help`, or None when it cannot run (not installed, not written yet)."""
    try:
        done = subprocess.run(
            [PY, "-m", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _dualgate_help() -> str | None:
    return _help("dualgate", "serve")


def option_help(text: str | None, option: str) -> str | None:
    """The help of one long option (its line and the indented lines under it), or None.

    Read from argparse's and click's layout alike: the option starts a line after indentation,
    and its block ends where the next line starting with `-` does. `--http` does not match
    `--http-parser` or `--http2`.
    """
    if text is None:
        return None
    lines = text.splitlines()
    start = re.compile(rf"^\s+(?:-\w, )?{re.escape(option)}(?![\w-])")
    for i, line in enumerate(lines):
        if start.match(line):
            block = [line]
            for following in lines[i + 1 :]:
                if following.lstrip().startswith("-"):
                    break
                block.append(following)
            return "\n".join(block)
    return None


def _offers(text: str | None, option: str, value: str) -> bool:
    """Whether an option's help names `value` as a word (a choice, or in its description)."""
    block = option_help(text, option)
    word = rf"(?<![\w-]){re.escape(value)}(?![\w-])"
    return block is not None and re.search(word, block) is not None


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


def _probe_dualgate_httptools() -> str | None:
    text = _dualgate_help()
    if text is None:
        return _probe_dualgate()
    if option_help(text, "--http") is None:
        return "the dualgate CLI has no `--http` (the parser choice is not in this build yet)"
    if not _offers(text, "--http", "httptools"):
        return "the dualgate CLI has no `--http httptools`"
    return None


def _probe_dualgate_httptools_uvloop() -> str | None:
    return _probe_dualgate_httptools() or _probe_dualgate_uvloop()


def _dualgate(loop: str, metrics: bool = False, http: str = "h11") -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        argv = [PY, "-m", "dualgate", "serve", app.target, "--host", LOOPBACK, "--port", str(port)]
        argv += ["--no-access-log", "--interface", app.interface]
        if metrics:
            # Every figure counted, a metrics listener on a free port, and the health answer.
            argv += ["--metrics-address", f"{LOOPBACK}:0", "--health-path", "/healthz"]
        text = _dualgate_help()
        if "--loop" in (text or ""):
            argv += ["--loop", loop]
        # Named even for h11 where the CLI has the choice, in case its default is to become
        # whichever parser is installed; a CLI without `--http` only has h11.
        if _offers(text, "--http", http):
            argv += ["--http", http]
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


def _gunicorn_help() -> str | None:
    return _help("gunicorn")


def _probe_gunicorn_h1c() -> str | None:
    if option_help(_gunicorn_help(), "--http-parser") is None:
        return "this gunicorn has no `--http-parser` (its C parser came with gunicorn 25)"
    return None


def _gunicorn(worker: str, parser: str = "python") -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        # One worker process: every server gets the same single core, where more processes
        # would only add context switches. Scenarios with several processes say how many.
        argv = [PY, "-m", "gunicorn", f"--workers={opts.processes}", f"--worker-class={worker}"]
        argv += [f"--bind={LOOPBACK}:{port}", "--log-level=warning"]
        if worker == "gthread":
            argv.append(f"--threads={opts.threads or 4}")
        # gunicorn's default (`auto`) is its C parser whenever gunicorn_h1c is installed; `fast`
        # refuses to fall back to Python. Older gunicorns have only the Python parser.
        if option_help(_gunicorn_help(), "--http-parser") is not None:
            argv.append(f"--http-parser={parser}")
        return [*argv, app.target]

    return build


def _uvicorn_help() -> str | None:
    return _help("uvicorn")


def _probe_uvicorn_zttp() -> str | None:
    if not _offers(_uvicorn_help(), "--http", "zttp"):
        return "this uvicorn has no `--http zttp` (it came with uvicorn 0.55)"
    return None


def _uvicorn_with(http: str, loop: str) -> Build:
    def build(app: AppRef, port: int, opts: Options) -> list[str]:
        argv = [PY, "-m", "uvicorn", app.target, "--host", LOOPBACK, "--port", str(port)]
        argv += ["--http", http, "--loop", loop, "--no-access-log", "--log-level", "warning"]
        if opts.processes > 1:
            argv += ["--workers", str(opts.processes)]
        if app.interface == "wsgi":
            return [*argv, "--interface", "wsgi", "--lifespan", "off"]
        return [*argv, "--interface", "asgi3"]

    return build


_uvicorn = _uvicorn_with("h11", "asyncio")


def _granian(app: AppRef, port: int, opts: Options) -> list[str]:
    argv = [PY, "-m", "granian", "--interface", app.interface]
    argv += ["--host", LOOPBACK, "--port", str(port), "--workers", str(opts.processes)]
    # One Rust runtime thread per worker, as the other servers get one core; HTTP/1 only, as
    # the others speak, rather than sniffing each connection for HTTP/2 (its `auto`).
    argv += ["--runtime-threads", "1", "--http", "1"]
    argv += ["--no-access-log", "--log-level", "warning"]
    if app.interface == "wsgi" and opts.threads is not None:
        # The threads WSGI apps run on; ASGI apps run on the event loop (granian allows 1).
        argv += ["--blocking-threads", str(opts.threads)]
    return [*argv, app.target]


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
        "dualgate-httptools",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("dualgate", "h11", "httptools"),
        _dualgate("asyncio", http="httptools"),
        "dualgate --http httptools (llhttp parsing requests) with the stdlib asyncio loop",
        probe=_probe_dualgate_httptools,
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "dualgate-httptools-uvloop",
        frozenset({"wsgi", "asgi", "websocket"}),
        ("dualgate", "h11", "httptools", "uvloop"),
        _dualgate("uvloop", http="httptools"),
        "dualgate --http httptools --loop uvloop",
        probe=_probe_dualgate_httptools_uvloop,
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
        "gunicorn-h1c",
        frozenset({"wsgi"}),
        ("gunicorn", "gunicorn_h1c"),
        _gunicorn("gthread", parser="fast"),
        "gunicorn gthread (4 threads unless --threads) with --http-parser=fast: gunicorn_h1c, "
        "its C parser (picohttpparser)",
        probe=_probe_gunicorn_h1c,
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
        "uvicorn-httptools",
        frozenset({"wsgi", "asgi"}),
        ("uvicorn", "httptools", "uvloop"),
        _uvicorn_with("httptools", "uvloop"),
        "uvicorn --http httptools --loop uvloop, what `uvicorn[standard]` picks; WSGI apps "
        "through its --interface wsgi",
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "uvicorn-zttp",
        frozenset({"wsgi", "asgi"}),
        ("uvicorn", "zttp", "uvloop"),
        _uvicorn_with("zttp", "uvloop"),
        "uvicorn --http zttp (a Zig parser) --loop uvloop: beside uvicorn-httptools, the "
        "parser alone differs; WSGI apps through its --interface wsgi",
        probe=_probe_uvicorn_zttp,
        multi=True,
        tls=_SSL_FLAGS,
    ),
    Server(
        "granian",
        frozenset({"wsgi", "asgi"}),
        ("granian",),
        _granian,
        "granian (Rust, hyper) --interface wsgi or asgi, 1 worker, 1 runtime thread, HTTP/1, "
        "its default loop (auto: uvloop when installed)",
        multi=True,
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
