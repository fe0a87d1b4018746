"""Every setting of dualgate, declared once.

Each field of `Config` carries its help text and, where it needs one, a check; the CLI builds its
flags from these fields, so a new setting is one new field here and nothing else. The app itself
is loaded here too ("module:attr", never eval), and its interface (WSGI or ASGI) decided once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from dualgate.edge.forwarded import DEFAULT_FORWARDED_ALLOW_IPS, parse_trust_list

# Re-exported: `from dualgate.config import ConfigError` is how users have caught them.
from dualgate.errors import AppLoadError, ConfigError
from dualgate.h2.settings import check_frame_size, check_window

# Re-exported: --header NAME:VALUE is read by the header grammar.
from dualgate.http.grammar import parse_header
from dualgate.logs import AccessFormat

# Re-exported: what an address on the command line says is net/addresses.py's.
from dualgate.net.addresses import (
    Address,
    InheritedSocket,
    TCPAddress,
    UnixAddress,
    parse_bind,
    parse_host_port,
)

__all__ = [
    "LOG_CONFIG_KINDS",
    "SECTIONS",
    "Address",
    "AppLoadError",
    "Config",
    "ConfigError",
    "InheritedSocket",
    "TCPAddress",
    "UnixAddress",
    "parse_bind",
    "parse_header",
    "parse_host_port",
]

Interface = Literal["auto", "asgi", "wsgi"]
Lifespan = Literal["auto", "on", "off"]
LoopName = Literal["auto", "asyncio", "uvloop"]
HTTPParser = Literal["auto", "h11", "httptools"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
StartMethod = Literal["fork", "spawn"]
WebSockets = Literal["auto", "wsproto", "none"]
Http2 = Literal["auto", "on", "off"]

# What --log-config takes, told by the file's suffix (as uvicorn's --log-config).
LOG_CONFIG_KINDS = {
    ".json": "dictConfig",
    ".yaml": "dictConfig",
    ".yml": "dictConfig",
    ".ini": "fileConfig",
    ".cfg": "fileConfig",
    ".conf": "fileConfig",
}


# The topics the settings are grouped by, in the order --help and --print-config show them.
# Each field belongs to the section `_section` opened last above it in Config's body.
SECTIONS = {
    "app": "the application",
    "bind": "where to listen",
    "http": "HTTP limits and timeouts",
    "logging": "logging",
    "responses": "response headers",
    "processes": "processes: supervisor and workers, restarts, reload",
    "edge": "at the edge: proxy headers, PROXY protocol, TLS",
    "ws": "WebSockets (ASGI applications)",
    "metrics": "metrics and health",
    "h2": "HTTP/2",
}
_open_section = ["app"]  # only changes while Config's body runs, at import


def _section(name: str) -> None:
    if name not in SECTIONS:
        raise KeyError(f"no section {name!r} in SECTIONS")
    _open_section[0] = name


def _setting(default: Any, help: str, *, flag: bool = True, **extra: Any) -> Any:
    metadata = {"help": help, "flag": flag, "section": _open_section[0], **extra}
    return field(default=default, metadata=metadata)


def _setting_from(
    factory: Callable[[], Any], help: str, *, shown: str, flag: bool = True, **extra: Any
) -> Any:
    """A setting whose default is computed when a Config is made (`shown` goes in --help)."""
    metadata = {"help": help, "flag": flag, "shown_default": shown, "section": _open_section[0]}
    return field(default_factory=factory, metadata={**metadata, **extra})


def _seconds(default: float, help: str, *, zero: bool = False) -> Any:
    """A duration: seconds (its help is said after "seconds"), more than 0, or with `zero` 0
    too (where 0 means more than "at once", its help says what)."""
    return _setting(default, "seconds " + help, check=_non_negative if zero else _positive)


def _count(default: int | None, help: str) -> Any:
    """A number of things (bytes, connections, requests, fields): a whole number above 0, or
    None where the default is none (its help says what none means)."""
    return _setting(default, help, check=_positive)


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {value}")


def _non_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")


def _http_parser(name: str, value: str) -> None:
    # Checked here, not when the first connection comes: a missing parser is a setting that
    # cannot run, told in one line before the server binds.
    if value == "httptools" and importlib.util.find_spec("httptools") is None:
        raise ConfigError(f"{name} httptools: httptools is not installed (pip install httptools)")


def _port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be between 0 and 65535, got {value}")


def _mount(name: str, value: tuple[str, ...]) -> None:
    for entry in value:
        prefix, sep, target = entry.partition("=")
        if not sep or not prefix.startswith("/") or ":" not in target:
            raise ConfigError(
                f"{name} takes PREFIX=MODULE:ATTR with PREFIX starting with /, got {entry!r}"
            )


def _health_path(name: str, value: str | None) -> None:
    if value is None:
        return
    if not value.startswith("/") or any(c in value for c in "?# ") or not value.isascii():
        raise ConfigError(f"{name} must be a path starting with /, without a query, got {value!r}")
    if not value.isprintable():
        raise ConfigError(f"{name} must be printable, got {value!r}")


def _log_config(name: str, value: str | None) -> None:
    # Read and applied by logsetup.py when the process starts; what can be told without
    # applying it (a side effect) is told here, before anything starts.
    if value is None:
        return
    suffix = os.path.splitext(value)[1].lower()
    if suffix not in LOG_CONFIG_KINDS:
        kinds = ", ".join(f"{s} ({kind})" for s, kind in LOG_CONFIG_KINDS.items())
        raise ConfigError(f"{name} {value}: the file's suffix tells its kind: {kinds}")
    if not os.path.isfile(value):
        raise ConfigError(f"{name} {value}: no such file")


def _parsed_by(
    parse: Callable[[Any], object], *, each: bool = False, colon: bool = False
) -> Callable[[str, Any], None]:
    """A check that a value (or, with `each`, every entry of a repeatable setting) parses: the
    parser's ValueError becomes one ConfigError naming the setting. None is always allowed."""
    joint = ": " if colon else " "

    def check(name: str, value: Any) -> None:
        if value is None:
            return
        for entry in value if each else (value,):
            try:
                parse(entry)
            except ValueError as exc:
                raise ConfigError(f"{name}{joint}{exc}") from None

    return check


def _verify_mode(value: str | int) -> object:
    from dualgate.edge.tls import verify_mode  # ssl loads only when a TLS setting is checked

    return verify_mode(value)


def _check_ciphers(value: str) -> None:
    from dualgate.edge.tls import check_ciphers

    check_ciphers(value)


_trust_list = _parsed_by(parse_trust_list, colon=True)
_cert_reqs = _parsed_by(_verify_mode)
_ciphers = _parsed_by(_check_ciphers, colon=True)
_bind = _parsed_by(parse_bind, each=True)
_headers = _parsed_by(parse_header, each=True)
_host_port = _parsed_by(parse_host_port)
_access_log_format = _parsed_by(AccessFormat, colon=True)


def _forwarded_allow_ips() -> str:
    return os.environ.get("FORWARDED_ALLOW_IPS", DEFAULT_FORWARDED_ALLOW_IPS)


@dataclass(frozen=True)
class Config:
    _section("app")
    app: str | Callable[..., Any] | None = _setting(
        None, "the application as MODULE:ATTR, for example hello:application", flag=False
    )

    _section("bind")
    bind: tuple[str, ...] = _setting(
        (),
        "listen on ADDRESS: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; repeatable, for one "
        "server on several listeners (instead of --host/--port, --uds, --fd)",
        check=_bind,
        metavar="ADDRESS",
    )
    host: str = _setting("127.0.0.1", "address to bind")
    port: int = _setting(
        8000, "port to bind; 0 picks a free port (the bound one is logged)", check=_port
    )
    uds: str | None = _setting(None, "bind a unix domain socket at this path instead of host/port")
    fd: int | None = _setting(None, "serve on this already-listening inherited socket descriptor")
    backlog: int = _count(2048, "listen backlog of the server socket")

    _section("app")
    interface: Interface = _setting(
        "auto", "application interface; auto detects it once at start-up"
    )
    factory: bool = _setting(False, "treat MODULE:ATTR as a callable that returns the application")
    app_dir: str = _setting(".", "directory put first on sys.path before loading the application")
    mount: tuple[str, ...] = _setting(
        (),
        "serve PREFIX=MODULE:ATTR (WSGI or ASGI) under a path prefix; repeatable",
        check=_mount,
        metavar="PREFIX=MODULE:ATTR",
    )
    root_path: str = _setting("", "path prefix the app is mounted under (SCRIPT_NAME / root_path)")
    lifespan: Lifespan = _setting("auto", "ASGI lifespan protocol: auto, on or off")
    loop: LoopName = _setting("auto", "event loop: uvloop when installed (auto), or asyncio")
    threads: int = _count(16, "pool threads running WSGI applications")

    _section("http")
    limit_concurrency: int = _count(
        1000,
        "most open connections; beyond it a new connection's first request gets 503 and a close",
    )
    timeout_keep_alive: float = _seconds(5.0, "an idle keep-alive connection is kept open")
    timeout_request_head: float = _seconds(
        10.0, "a client has to send a whole request head once it starts"
    )
    timeout_read: float = _seconds(60.0, "a request body may stall with no bytes arriving")
    timeout_write: float = _seconds(60.0, "a response may stall with a client that takes no bytes")
    timeout_worker: float = _seconds(
        10.0, "a request waits for a free pool thread before a 503", zero=True
    )
    timeout_graceful_shutdown: float = _seconds(
        30.0, "in-flight requests get to finish on shutdown", zero=True
    )
    max_head_size: int = _count(
        65536, "largest request line plus headers in bytes; larger gets 431"
    )
    max_header_fields: int = _count(
        100,
        "most header fields in a request head (and trailer fields in a chunked body); more "
        "gets 431",
    )
    max_body_size: int | None = _count(
        None, "largest request body in bytes; larger gets 413 (default: no limit)"
    )
    body_buffer_size: int = _count(
        262144,
        "request body bytes buffered before the socket is paused (and response bytes queued "
        "before a worker waits)",
    )
    http: HTTPParser = _setting(
        "auto",
        "request head parser: httptools (llhttp, less CPU) when installed (auto), or h11; "
        "both give the same answers",
        check=_http_parser,
    )

    _section("logging")
    log_level: LogLevel = _setting(
        "info", "level of the dualgate.error logger (a level --log-config gives it wins)"
    )
    access_log: bool = _setting(True, "log one line per response to dualgate.access")
    log_config: str | None = _setting(
        None,
        "configure logging from this file first: .json or .yaml (logging.config.dictConfig; "
        ".yaml needs PyYAML) or .ini (fileConfig) (default: none; dualgate's own stderr "
        "handler, which stands aside for handlers the application put on the root logger)",
        check=_log_config,
        metavar="FILE",
    )
    access_log_format: str | None = _setting(
        None,
        "the access line in gunicorn's atoms, e.g. '%(h)s \"%(r)s\" %(s)s %(b)s %(D)s'; "
        'README "Logging" lists them (default: CLIENT "METHOD TARGET HTTP/VERSION" STATUS '
        "BYTES DURATIONms)",
        check=_access_log_format,
        metavar="FORMAT",
    )

    _section("responses")
    server_header: bool = _setting(True, "send a Server header")
    date_header: bool = _setting(True, "send a Date header")
    header: tuple[str, ...] = _setting(
        (),
        "add the header NAME:VALUE to every response, after the application's own; "
        "repeatable (a Server or Date one replaces dualgate's)",
        check=_headers,
        metavar="NAME:VALUE",
        # A header value may hold commas: from the environment, one header a line.
        env_separator="\n",
    )

    # Supervisor and workers, restarts, reload (procs/supervisor.py, procs/reload.py).
    _section("processes")
    workers: int | None = _count(
        None,
        "serve from this many worker processes under a supervisor (default: one process, "
        "no supervisor)",
    )
    reuse_port: bool = _setting(
        False, "with --workers: each worker binds its own SO_REUSEPORT socket (TCP only)"
    )
    start_method: StartMethod = _setting(
        "fork", "how worker processes start: fork (fast) or spawn (a fresh interpreter)"
    )
    timeout_worker_healthcheck: float = _seconds(
        60.0,
        "a worker may take to start, or its event loop may go without a heartbeat, "
        "before the supervisor replaces it",
    )
    limit_max_requests: int | None = _count(
        None, "a worker is replaced after serving this many requests"
    )
    limit_max_requests_jitter: int = _setting(
        0,
        "add a random 0..N to each worker's --limit-max-requests, so they do not all restart "
        "at once",
        check=_non_negative,
    )
    reload: bool = _setting(
        False, "development: restart the workers when a watched file changes (needs watchfiles)"
    )
    reload_dir: tuple[str, ...] = _setting(
        (), "directory watched by --reload (default: the current one); repeatable", metavar="DIR"
    )
    reload_include: tuple[str, ...] = _setting(
        (), "file pattern --reload watches (default: *.py); repeatable", metavar="GLOB"
    )
    reload_exclude: tuple[str, ...] = _setting(
        (), "file or directory pattern --reload ignores; repeatable", metavar="GLOB"
    )
    pid: str | None = _setting(
        None,
        "write the process id (with --workers: the supervisor's) to this file, removed at exit",
        metavar="FILE",
    )

    # edge/forwarded.py, edge/proxy_protocol.py, edge/tls.py; README "Behind a proxy" and
    # "TLS" tell the rules.
    _section("edge")
    proxy_headers: bool = _setting(
        True,
        "take the client address, scheme and host from X-Forwarded-* and Forwarded headers "
        "sent by a peer in --forwarded-allow-ips",
    )
    forwarded_allow_ips: str = _setting_from(
        _forwarded_allow_ips,
        "peers trusted with proxy headers and the PROXY protocol: comma-separated addresses, "
        "CIDR networks (IPv4, IPv6), unix: for unix-socket peers, or * for all",
        shown=f"$FORWARDED_ALLOW_IPS, else {DEFAULT_FORWARDED_ALLOW_IPS}",
        check=_trust_list,
    )
    forwarded_trust_hops: int | None = _count(
        None,
        "take the client from exactly this many entries from the right of X-Forwarded-For "
        "(or Forwarded), for a fixed chain of proxies, instead of the rightmost untrusted one",
    )
    proxy_protocol: bool = _setting(
        False,
        "every connection starts with a HAProxy PROXY protocol header (v1 or v2) from a "
        "trusted peer; others are closed",
    )
    ssl_certfile: str | None = _setting(None, "serve HTTPS with this PEM certificate (chain)")
    ssl_keyfile: str | None = _setting(
        None, "PEM private key of --ssl-certfile, when it is not in that file"
    )
    ssl_keyfile_password: str | None = _setting(
        None, "password of an encrypted private key", secret=True
    )
    ssl_ca_certs: str | None = _setting(
        None, "PEM file of the CA certificates client certificates are checked against"
    )
    ssl_cert_reqs: str | int = _setting(
        "none",
        "client certificates: none, optional or required (uvicorn's 0, 1, 2 too)",
        check=_cert_reqs,
    )
    ssl_ciphers: str | None = _setting(
        None, "OpenSSL cipher list for TLS 1.2 (default: Python's)", check=_ciphers
    )

    # Served by ws/protocol.py over wsproto.
    _section("ws")
    ws: WebSockets = _setting(
        "auto",
        "WebSockets for ASGI apps: auto (when wsproto is installed), wsproto (required), none",
    )
    ws_max_size: int = _count(
        16 * 1024 * 1024, "largest incoming WebSocket message in bytes; larger closes with 1009"
    )
    ws_max_queue: int = _count(
        32, "incoming WebSocket messages queued for the application before reading pauses"
    )
    ws_ping_interval: float = _seconds(
        20.0, "between the server's WebSocket pings; 0 sends none", zero=True
    )
    ws_ping_timeout: float = _seconds(
        20.0,
        "a WebSocket peer has to answer a ping before it is closed; 0 waits forever",
        zero=True,
    )
    ws_per_message_deflate: bool = _setting(
        True, "accept permessage-deflate compression (RFC 7692) when a client offers it"
    )
    ws_handshake_timeout: float = _seconds(
        10.0,
        "an application has to accept or deny a WebSocket, and a peer to answer "
        "the server's Close frame",
    )
    ws_write_timeout: float = _seconds(
        60.0,
        "a WebSocket may stall with a peer that takes no bytes before it is dropped",
    )

    # metrics/; README "Metrics" and "Health" list every figure and say what each costs.
    _section("metrics")
    metrics_address: str | None = _setting(
        None,
        "serve Prometheus metrics at http://HOST:PORT/metrics, answered by the event loop "
        "(with --workers: by the supervisor, for every worker); port 0 picks a free port",
        check=_host_port,
        metavar="HOST:PORT",
    )
    health_path: str | None = _setting(
        None,
        "answer GET PATH with 200 (503 once stopping) from the server itself, before the "
        "application and without a pool thread",
        check=_health_path,
        metavar="PATH",
    )
    pool_warning_interval: float = _setting(
        60.0,
        "while WSGI requests wait for a free pool thread, say so in dualgate.error at most "
        "once per this many seconds; 0 never",
        check=_non_negative,
    )

    # h2/; h2/settings.py and h2/guard.py tell what each limit defends against and why.
    _section("h2")
    http2: Http2 = _setting(
        "auto",
        "HTTP/2: auto (when h2 is installed), on (h2 required), off; by prior knowledge on a "
        "plain port (next to HTTP/1.1) and by ALPN under TLS",
    )
    h2_max_concurrent_streams: int = _count(
        100,
        "most HTTP/2 streams open at once per connection (a reset one counts until its "
        "handler has finished)",
    )
    h2_max_header_list_size: int | None = _count(
        None,
        "largest HTTP/2 request header list: larger gets 431, twice as large closes the "
        "connection (default: --max-head-size)",
    )
    h2_initial_window_size: int = _setting(
        65535, "HTTP/2 receive window of each stream (request body bytes)", check=check_window
    )
    h2_max_frame_size: int = _setting(
        16384, "largest HTTP/2 frame payload a client may send", check=check_frame_size
    )
    h2_max_resets_per_second: int = _count(
        50,
        "HTTP/2 stream resets per second a connection may cause, after a burst of twice "
        "--h2-max-concurrent-streams; more closes it with ENHANCE_YOUR_CALM",
    )
    h2_max_control_frames_per_second: int = _count(
        100,
        "HTTP/2 frames per second that carry no request, after a burst of twice as many; "
        "more closes the connection with ENHANCE_YOUR_CALM",
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            check = item.metadata.get("check")
            if check is not None:
                check("--" + item.name.replace("_", "-"), getattr(self, item.name))
        if self.app is None and not self.mount:
            raise ConfigError("an application (MODULE:ATTR) or at least one --mount is needed")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise ConfigError("--root-path must start with / and not end with /")
        self._check_binding()
        self._check_tls()
        self._check_processes()
        if self.http2 == "on" and importlib.util.find_spec("h2") is None:
            raise ConfigError("--http2 on needs the h2 package: pip install 'dualgate[http2]'")

    def addresses(self) -> list[Address]:
        """Where this server listens: every --bind; else --fd, --uds, or --host and --port."""
        if self.bind:
            return [parse_bind(entry) for entry in self.bind]
        if self.fd is not None:
            return [InheritedSocket(self.fd)]
        if self.uds is not None:
            return [UnixAddress(self.uds)]
        return [TCPAddress(self.host, self.port)]

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        """The --header ones, as every response carries them."""
        return [parse_header(entry) for entry in self.header]

    def _check_binding(self) -> None:
        if not self.bind:
            return
        if self.uds is not None or self.fd is not None:
            raise ConfigError("--bind names every address: not with --uds or --fd")
        defaults = {item.name: item.default for item in dataclasses.fields(self)}
        if self.host != defaults["host"] or self.port != defaults["port"]:
            raise ConfigError("--bind names every address: not with --host or --port")

    def _check_processes(self) -> None:
        if self.reuse_port and (self.uds is not None or self.fd is not None):
            raise ConfigError("--reuse-port binds host and port itself; not with --uds or --fd")
        if self.reuse_port and not all(isinstance(a, TCPAddress) for a in self.addresses()):
            raise ConfigError("--reuse-port binds each TCP address itself; not with unix: or fd://")
        if self.start_method == "spawn" and self.app is not None and not isinstance(self.app, str):
            raise ConfigError(
                "--start-method spawn imports the application in each worker: give it as "
                "MODULE:ATTR, not as an object"
            )
        if self.reload and self.app is not None and not isinstance(self.app, str):
            raise ConfigError("--reload re-imports the application: give it as MODULE:ATTR")

    def _check_tls(self) -> None:
        tls_only = {
            "ssl_keyfile": self.ssl_keyfile is not None,
            "ssl_keyfile_password": self.ssl_keyfile_password is not None,
            "ssl_ca_certs": self.ssl_ca_certs is not None,
            "ssl_ciphers": self.ssl_ciphers is not None,
            "ssl_cert_reqs": str(self.ssl_cert_reqs).strip().lower() not in ("none", "0"),
        }
        given = [name for name, set_ in tls_only.items() if set_]
        if given and self.ssl_certfile is None:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} needs --ssl-certfile (TLS is off without it)")
        if tls_only["ssl_cert_reqs"] and self.ssl_ca_certs is None:
            raise ConfigError(
                "--ssl-cert-reqs optional/required needs --ssl-ca-certs, the CA certificates "
                "client certificates are checked against"
            )
