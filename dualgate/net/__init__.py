"""Sockets: binding the listeners, socket activation and sd_notify, accepting connections.

Owns: where the listening sockets come from and how they are bound (`listeners`), systemd's
LISTEN_FDS and NOTIFY_SOCKET (`systemd`), and an accept loop that can pause (`acceptor`).

May import: the stdlib, `dualgate.config`, `dualgate.errors`, `dualgate.logs`. No HTTP.
"""
