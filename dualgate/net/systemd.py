"""systemd without a dependency: socket activation (sd_listen_fds) and sd_notify.

Both are small, stable protocols (systemd's sd_listen_fds(3) and sd_notify(3) man pages):
- socket activation: systemd passes LISTEN_FDS descriptors starting at 3, and LISTEN_PID names
  the process they are meant for (a child that inherits the environment must not take them);
- notification: one datagram per state change ("READY=1", "RELOADING=1", "STOPPING=1") to the
  unix socket named by NOTIFY_SOCKET, where a leading "@" means the abstract namespace.
"""

from __future__ import annotations

import os
import socket
import time

from dualgate.errors import ConfigError
from dualgate.logs import error_logger

__all__ = ["listen_sockets", "notify", "reloading_message"]

_FIRST_FD = 3  # SD_LISTEN_FDS_START


def listen_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed to this process, or [] when there are none.

    The variables are removed once read, so worker processes and anything the application
    starts do not see them.
    """
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if count is None or pid is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ConfigError(f"LISTEN_FDS must be a number, got {count!r}")
    sockets = []
    for fd in range(_FIRST_FD, _FIRST_FD + int(count)):
        # systemd passes them inheritable; nothing started from here should hold them open.
        os.set_inheritable(fd, False)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} is not a socket ({exc})") from exc
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ConfigError(
                f"LISTEN_FDS: descriptor {fd} is not a listening stream socket "
                "(the .socket unit needs ListenStream=)"
            )
        sockets.append(sock)
    return sockets


def notify(message: str) -> bool:
    """Send `message` to the service manager; False when there is none (or it cannot be told)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        error_logger.warning("Could not notify systemd (%s): %s", address, exc)
        return False
    return True


def reloading_message() -> str:
    # Type=notify-reload services must say when the reload began, on CLOCK_MONOTONIC.
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
