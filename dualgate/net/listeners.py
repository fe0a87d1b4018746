"""The listening sockets of a server, or of a supervisor and its workers, bound once before any
worker starts: the one binding path, whether one process serves or many.

Where they come from: systemd socket activation (LISTEN_FDS) when there is some, else every
address of `Config.addresses()`: each `--bind` (one server on several listeners), or else the
one that `--fd`, `--uds` or `--host`/`--port` names. A host name binds every address it
resolves to, as asyncio's create_server does. With `--reuse-port` and workers the supervisor
only reserves each TCP port (bound, never listening, so the kernel hands it no connection) and
each worker binds and listens on its own socket; one process alone listens as without it.
`listen_on` binds a metrics listener.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, field

from dualgate.config import Config
from dualgate.errors import ConfigError
from dualgate.net.addresses import InheritedSocket, TCPAddress
from dualgate.net.systemd import listen_sockets

__all__ = ["Listeners", "bind_reuse_port", "describe_address", "listen_on", "open_listeners"]


@dataclass
class Listeners:
    # Shared by every worker (empty with --reuse-port).
    shared: list[socket.socket]
    # With --reuse-port: the addresses each worker binds for itself, and the supervisor's
    # non-listening sockets that keep those ports reserved.
    reuse_port: list[tuple[int, tuple[object, ...]]]
    reserved: list[socket.socket]
    # The unix socket paths this process created, removed when it stops.
    unix_paths: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Close this process's handles (idempotent); workers may still hold theirs."""
        for sock in self.shared + self.reserved:
            sock.close()
        for path in self.unix_paths:
            if _is_socket(path):
                os.unlink(path)
        self.unix_paths.clear()


def open_listeners(config: Config, *, workers: bool = True) -> Listeners:
    """The sockets `config` names; `workers`: for a supervisor, whose workers share them."""
    per_worker = workers and config.reuse_port
    activated = listen_sockets()
    if activated:
        if per_worker:
            raise ConfigError("--reuse-port cannot be used with sockets passed by systemd")
        return Listeners(activated, [], [])
    listeners = Listeners([], [], [])
    try:
        for address in config.addresses():
            if isinstance(address, InheritedSocket):
                listeners.shared.append(socket.socket(fileno=address.fd))
            elif not isinstance(address, TCPAddress):
                listeners.shared.append(_bind_unix(address.path, config.backlog))
                listeners.unix_paths.append(address.path)
            elif per_worker:
                reserved = _bind_all(address.host, address.port, reuse_port=True)
                listeners.reserved += reserved
                # Port 0 is resolved once, here: every worker binds the port the supervisor got.
                listeners.reuse_port += [(int(s.family), tuple(s.getsockname())) for s in reserved]
            else:
                listeners.shared += listen_on(address.host, address.port, config.backlog)
    except BaseException:
        listeners.close()  # what was bound before the one that failed
        raise
    return listeners


def listen_on(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to, all on the same port."""
    bound = _bind_all(host, port, reuse_port=False)
    for sock in bound:
        sock.listen(backlog)
    return bound


def bind_reuse_port(family: int, address: tuple[object, ...], backlog: int) -> socket.socket:
    """A worker's own listening socket on an address the supervisor reserved."""
    sock = _bind_tcp(family, address, reuse_port=True)
    sock.listen(backlog)
    return sock


def _bind_all(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    bound: list[socket.socket] = []
    try:
        for family, _type, _proto, _name, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if bound and port == 0:
                # Several addresses (localhost: ::1 and 127.0.0.1) share the port the first got.
                address = (address[0], bound[0].getsockname()[1], *address[2:])
            if any(sock.getsockname() == address for sock in bound):
                continue
            bound.append(_bind_tcp(family, tuple(address), reuse_port=reuse_port))
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind_tcp(family: int, address: tuple[object, ...], *, reuse_port: bool) -> socket.socket:
    # IPPROTO_TCP named, not left at 0: asyncio sets TCP_NODELAY on an accepted socket only when
    # its proto says TCP, and accepted sockets copy the listener's (uvicorn issue #3149).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # As asyncio does: an IPv6 socket does not also take the IPv4 addresses.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise _naming(exc, describe_address(address).removeprefix("http://")) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: str, backlog: int) -> socket.socket:
    if os.path.exists(path) and _is_socket(path):
        os.unlink(path)  # a stale socket file from a previous run, as the one-process server
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _naming(exc, f"unix:{path}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _naming(exc: OSError, address: str) -> OSError:
    """The same failure, naming the address it was for: "Address already in use" alone does
    not say which of several --bind addresses was taken."""
    return OSError(exc.errno, exc.strerror, address)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def describe_address(address: object, scheme: str = "http") -> str:
    """A bound address as the log says it: a URL, or a unix socket's path."""
    if isinstance(address, tuple):
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{scheme}://{host}:{address[1]}"
    return f"unix:{address}" + (" (TLS)" if scheme == "https" else "")
