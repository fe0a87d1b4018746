"""Real proxies in front of a test upstream: nginx and HAProxy (Debian packages), and TLS certs.

- `tls_certs`: a trustme CA, a server certificate for 127.0.0.1/localhost and a client
  certificate, written as PEM files under tmp_path; `client_hello(certs)` the first bytes a
  TLS client sends.
- `nginx_proxy(upstream, tls=None)`: nginx on 127.0.0.1 and an ephemeral port, forwarding to
  a TCP (host, port) or a unix socket path with X-Forwarded-For/-Proto/-Host/-Port and
  Forwarded set; with `tls`, it terminates HTTPS.
- `haproxy_proxy(upstream, send_proxy="v1"|"v2"|None, mode="tcp"|"http", tls=None)`: HAProxy
  the same way, writing a PROXY protocol header to the upstream.
- `RawUpstream`: a stdlib socket server that records the bytes of each request it gets.
- `client_connect(port)`: connects from 127.0.0.2, so a client is told apart from the proxy
  (which reaches the upstream from 127.0.0.1) on one machine.

The listening socket is bound here (port 0) and inherited by the proxy (nginx through its
NGINX environment variable, HAProxy as `fd@N`), so no port is guessed and none can be taken in
between. Everything (config, pid, logs, temp paths) lives under the test's tmp_path; a proxy is
stopped by its PID. .ci/run installs both packages when they are missing.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme

SOCKET_TIMEOUT = 10.0
START_TIMEOUT = 10.0
CLIENT_ADDRESS = "127.0.0.2"

Upstream = tuple[str, int] | str


# -- certificates --------------------------------------------------------------------------


@dataclass
class Certs:
    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: Path
    server_cert_file: Path  # the certificate chain, leaf first
    server_key_file: Path
    server_combined_file: Path  # key and chain in one file (HAProxy's `crt`)
    client_cert_file: Path
    client_key_file: Path

    def server_options(self, **options: Any) -> dict[str, Any]:
        """A dualgate server's settings for this certificate and key, with `options`."""
        return {
            "ssl_certfile": str(self.server_cert_file),
            "ssl_keyfile": str(self.server_key_file),
            **options,
        }

    def client_context(self, *, with_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return context


def make_certs(directory: Path, *, common_name: str = "dualgate-test-server") -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1", common_name=common_name)
    client = ca.issue_cert("client@example.org", common_name="dualgate-test-client")
    certs = Certs(
        ca=ca,
        server=server,
        client=client,
        ca_file=directory / "ca.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server.key",
        server_combined_file=directory / "server-combined.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.server_cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(certs.server_key_file))
    server.private_key_and_cert_chain_pem.write_to_path(str(certs.server_combined_file))
    certs.client_cert_file.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(certs.client_key_file))
    return certs


@pytest.fixture
def tls_certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def client_hello(certs: Certs) -> bytes:
    """The bytes of a ClientHello for this CA's server, as a client's first write."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = certs.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- a raw upstream ------------------------------------------------------------------------

_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class RawUpstream:
    """Answers every request with 200 "ok" and keeps the raw bytes it received, PROXY header
    included, up to the end of the request head."""

    def __init__(self, unix_path: Path | None = None) -> None:
        if unix_path is None:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address: Upstream = ("127.0.0.1", self.sock.getsockname()[1])
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(unix_path))
            self.address = str(unix_path)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.received: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="raw-upstream", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(SOCKET_TIMEOUT)
                try:
                    data = _read_head(conn)
                except OSError:
                    continue
                self.received.put(data)
                try:
                    conn.sendall(RESPONSE)
                except OSError:
                    continue

    def next_request(self, timeout: float = SOCKET_TIMEOUT) -> bytes:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(SOCKET_TIMEOUT)
        self.sock.close()
        if isinstance(self.address, str) and os.path.exists(self.address):
            os.unlink(self.address)


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        start = 0
        if data.startswith(_V2_SIGNATURE) and len(data) >= 16:
            # The binary PROXY header may itself hold CRLFCRLF: look past it.
            start = 16 + int.from_bytes(data[14:16], "big")
        if len(data) > start and data.find(b"\r\n\r\n", start) >= 0:
            return data
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise TimeoutError("no complete request head")


def request_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) pairs of the request head in `raw` (after any PROXY header)."""
    start = 0
    if raw.startswith(_V2_SIGNATURE):
        start = 16 + int.from_bytes(raw[14:16], "big")
    elif raw.startswith(b"PROXY "):
        start = raw.index(b"\r\n") + 2
    head = raw[start:].split(b"\r\n\r\n", 1)[0]
    pairs = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


def header_values(raw: bytes, name: bytes) -> list[bytes]:
    return [value for key, value in request_headers(raw) if key == name]


def client_connect(port: int, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    """A connection to 127.0.0.1:port from 127.0.0.2 (any loopback address works on Linux)."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(CLIENT_ADDRESS, 0)
    )
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    chunks = []
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- running a proxy -----------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    scheme: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def assert_running(self) -> None:
        code = self.process.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.log_text()}"


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs it: apt-get install {name})")
    return path


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (both proxies stop at once on it), a bounded wait, then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SOCKET_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SOCKET_TIMEOUT)


def _wait_for(proxy: Proxy, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        proxy.assert_running()
        assert time.monotonic() < deadline, f"{proxy.name} not ready:\n{proxy.log_text()}"
        time.sleep(0.01)


NGINX_FORWARDING = """
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header Forwarded "for=\\"$forwarded_node\\";proto=$scheme;host=\\"$http_host\\"";
"""


def nginx_config(
    directory: Path,
    port: int,
    upstream: Upstream,
    *,
    tls: Certs | None,
    forwarding: str,
) -> str:
    target = f"unix:{upstream}" if isinstance(upstream, str) else f"{upstream[0]}:{upstream[1]}"
    user = "user root;" if os.geteuid() == 0 else ""
    listen = f"listen 127.0.0.1:{port}" + (" ssl;" if tls else ";")
    certificates = (
        f"ssl_certificate {tls.server_cert_file};\n    ssl_certificate_key {tls.server_key_file};"
        if tls
        else ""
    )
    return f"""
{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log notice;
events {{ worker_connections 64; }}
http {{
  access_log {directory}/access.log;
  client_body_temp_path {directory}/client_body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  # RFC 7239 wants an IPv6 node in brackets (and quoted), an IPv4 one bare.
  map $remote_addr $forwarded_node {{
    "~:" "[$remote_addr]";
    default $remote_addr;
  }}
  upstream app {{ server {target}; }}
  server {{
    {listen}
    {certificates}
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{forwarding}
    }}
  }}
}}
"""


def start_nginx(
    directory: Path,
    upstream: Upstream,
    *,
    tls: Certs | None = None,
    forwarding: str = NGINX_FORWARDING,
) -> Proxy:
    directory.mkdir(parents=True, exist_ok=True)
    sock = _listen()
    port = sock.getsockname()[1]
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, upstream, tls=tls, forwarding=forwarding))
    log = directory / "error.log"
    with sock, open(directory / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [_binary("nginx"), "-p", str(directory), "-c", str(config), "-e", str(log)],
            # nginx takes over listening sockets named in NGINX (how it upgrades itself).
            env={**os.environ, "NGINX": f"{sock.fileno()};"},
            pass_fds=[sock.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    proxy = Proxy("nginx", process, port, "https" if tls else "http", log)
    try:
        _wait_for(proxy, lambda: "start worker process" in proxy.log_text())
    except BaseException:
        _stop(process)
        raise
    return proxy


def haproxy_config(
    fd: int,
    admin: Path,
    upstream: Upstream,
    *,
    send_proxy: Literal["v1", "v2"] | None,
    mode: Literal["tcp", "http"],
    tls: Certs | None,
) -> str:
    target = f"unix@{upstream}" if isinstance(upstream, str) else f"{upstream[0]}:{upstream[1]}"
    option = {"v1": "send-proxy", "v2": "send-proxy-v2", None: ""}[send_proxy]
    bind = f"bind fd@{fd}" + (f" ssl crt {tls.server_combined_file}" if tls else "")
    http = (
        "  option forwardfor\n"
        # HAProxy 2.6 cannot write Forwarded (2.7's option forwarded can); the client's own
        # would win over X-Forwarded-For, so it is dropped.
        "  http-request del-header Forwarded\n"
        "  http-request set-header X-Forwarded-Proto https if { ssl_fc }\n"
        "  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }\n"
        if mode == "http"
        else ""
    )
    return f"""
global
  maxconn 64
  stats socket {admin}

defaults
  mode {mode}
  timeout connect 5s
  timeout client 30s
  timeout server 30s

frontend edge
  {bind}
{http}  default_backend app

backend app
  server app1 {target} {option}
"""


def start_haproxy(
    directory: Path,
    upstream: Upstream,
    *,
    send_proxy: Literal["v1", "v2"] | None = "v1",
    mode: Literal["tcp", "http"] = "tcp",
    tls: Certs | None = None,
) -> Proxy:
    directory.mkdir(parents=True, exist_ok=True)
    sock = _listen()
    port = sock.getsockname()[1]
    config = directory / "haproxy.cfg"
    config.write_text(
        haproxy_config(
            sock.fileno(),
            directory / "admin.sock",
            upstream,
            send_proxy=send_proxy,
            mode=mode,
            tls=tls,
        )
    )
    log = directory / "haproxy.log"
    with sock, open(log, "wb") as output:
        process = subprocess.Popen(
            # -db: stay in the foreground, so the PID is HAProxy's own and SIGTERM stops it.
            [_binary("haproxy"), "-db", "-f", str(config)],
            pass_fds=[sock.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    proxy = Proxy("haproxy", process, port, "https" if tls else "http", log)
    # HAProxy binds its stats socket with its listeners, once the config is parsed: the
    # socket file appearing says the inherited one is being served too.
    admin = directory / "admin.sock"
    try:
        _wait_for(proxy, admin.exists)
    except BaseException:
        _stop(process)
        raise
    return proxy


ProxyFactory = Callable[..., Proxy]


def _proxies(tmp_path: Path, name: str, launch: Callable[..., Proxy]) -> Iterator[ProxyFactory]:
    """A factory of proxies, each in its own folder under `tmp_path`, all stopped after."""
    started: list[Proxy] = []

    def start(upstream: Upstream, **options: Any) -> Proxy:
        proxy = launch(tmp_path / f"{name}{len(started)}", upstream, **options)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        _stop(proxy.process)


@pytest.fixture
def nginx_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """nginx_proxy(upstream, tls=None, forwarding=NGINX_FORWARDING) -> Proxy, stopped after."""
    yield from _proxies(tmp_path, "nginx", start_nginx)


@pytest.fixture
def haproxy_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """haproxy_proxy(upstream, send_proxy="v1", mode="tcp", tls=None) -> Proxy."""
    yield from _proxies(tmp_path, "haproxy", start_haproxy)


@pytest.fixture
def raw_upstream() -> Iterator[Callable[..., RawUpstream]]:
    """raw_upstream(unix_path=None) -> RawUpstream, closed after the test."""
    upstreams: list[RawUpstream] = []

    def start(unix_path: Path | None = None) -> RawUpstream:
        upstream = RawUpstream(unix_path)
        upstreams.append(upstream)
        return upstream

    yield start
    for upstream in upstreams:
        upstream.close()
