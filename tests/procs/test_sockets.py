"""The sockets of a supervised server: what the supervisor binds, and what a worker accepts."""

from __future__ import annotations

import asyncio
import socket

from dualgate.config import Config
from dualgate.net.acceptor import Acceptor
from dualgate.net.listeners import bind_reuse_port, open_listeners
from tests.conftest import SOCKET_TIMEOUT


def test_bound_tcp_sockets_say_they_are_tcp() -> None:
    # Accepted sockets copy the listener's proto, and asyncio sets TCP_NODELAY only on IPPROTO_TCP.
    listeners = open_listeners(Config(app="x:y", port=0))
    try:
        (sock,) = listeners.shared
        assert sock.proto == socket.IPPROTO_TCP
        port = sock.getsockname()[1]
    finally:
        listeners.close()
    reserved = open_listeners(Config(app="x:y", port=0, reuse_port=True))
    try:
        ((family, address),) = reserved.reuse_port
        own = bind_reuse_port(family, address, 16)
        with own:
            assert own.proto == socket.IPPROTO_TCP
            assert own.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert own.getsockname() == reserved.reserved[0].getsockname()
    finally:
        reserved.close()
    assert port > 0


def test_acceptor_sets_nodelay_on_a_listener_made_without_a_proto() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as gunicorn's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        seen: asyncio.Future[tuple[int, int]] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(
                    (sock.proto, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                )
                transport.close()

        acceptor = Acceptor(loop, listener, Probe, batch=1)
        acceptor.start()
        with socket.create_connection(listener.getsockname(), timeout=SOCKET_TIMEOUT):
            result = await asyncio.wait_for(seen, SOCKET_TIMEOUT)
        await acceptor.close()
        return result

    proto, nodelay = asyncio.run(main())
    assert proto == 0
    assert nodelay == 1


def test_a_paused_acceptor_leaves_connections_in_the_queue() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        events: list[str] = []

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                events.append("accepted")

        acceptor = Acceptor(loop, listener, Probe, batch=1)
        acceptor.start()
        acceptor.pause()
        with socket.create_connection(listener.getsockname(), timeout=SOCKET_TIMEOUT):
            await asyncio.sleep(0.2)
            events.append("paused")
            acceptor.resume()
            for _ in range(100):
                if events[-1] == "accepted":
                    break
                await asyncio.sleep(0.02)
        await acceptor.close()
        return events

    assert asyncio.run(main()) == ["paused", "accepted"]
