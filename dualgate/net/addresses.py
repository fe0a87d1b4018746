"""What an address given as text says: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N.

A leaf, so that the settings (config.py) check an address with the same rule the binding
(listeners.py) follows; it binds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Address",
    "InheritedSocket",
    "TCPAddress",
    "UnixAddress",
    "parse_bind",
    "parse_host_port",
]


def parse_host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:9100); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"takes HOST:PORT (e.g. 127.0.0.1:9100 or [::1]:9100), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets ([::1]:9100), got {text!r}")
    if not host or int(port) > 65535:
        raise ValueError(f"takes HOST:PORT with a port up to 65535, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class TCPAddress:
    host: str  # a name binds every address it resolves to
    port: int


@dataclass(frozen=True)
class UnixAddress:
    path: str


@dataclass(frozen=True)
class InheritedSocket:
    fd: int  # a socket already listening, inherited from whoever started this process


Address = TCPAddress | UnixAddress | InheritedSocket


def parse_bind(text: str) -> Address:
    """One --bind: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (ValueError says what is wrong),
    the spellings of gunicorn's and hypercorn's --bind."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError(f"unix: takes the socket's path (unix:/run/app.sock), got {text!r}")
        return UnixAddress(text[5:])
    if text.startswith("fd://"):
        if not text[5:].isdigit():
            raise ValueError(f"fd:// takes a descriptor number (fd://3), got {text!r}")
        return InheritedSocket(int(text[5:]))
    try:
        host, port = parse_host_port(text)
    except ValueError as exc:
        if "brackets" in str(exc):
            raise
        raise ValueError(
            f"takes HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N, got {text!r}"
        ) from None
    return TCPAddress(host, port)
