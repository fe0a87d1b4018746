"""net/acceptor.py: connections taken in batches, and on asyncio's own loop each transport
made directly, without a task per connection (uvloop, and TLS, keep connect_accepted_socket)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import uvloop

from dualgate.net.acceptor import Acceptor
from tests.conftest import SOCKET_TIMEOUT

COUNT = 20


def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(COUNT * 2)
    return sock


class Probe(asyncio.Protocol):
    """Records what the transport says of the connection, and the tasks alive when it is made."""

    made: ClassVar[list[tuple[Any, Any, int, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        Probe.made.append(
            (
                transport.get_extra_info("peername"),
                transport.get_extra_info("sockname"),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                len(asyncio.all_tasks()),
            )
        )

    def data_received(self, data: bytes) -> None:
        pass


async def accept_all(batch: int) -> tuple[list[tuple[Any, Any, int, int]], list[Any], Acceptor]:
    """COUNT clients connect at once; their addresses, and what each connection was made with."""
    loop = asyncio.get_running_loop()
    sock = listener()
    Probe.made = []
    acceptor = Acceptor(loop, sock, Probe, batch=batch)
    clients = [socket.create_connection(sock.getsockname()) for _ in range(COUNT)]
    try:
        acceptor.start()
        for _ in range(int(SOCKET_TIMEOUT / 0.01)):
            if len(Probe.made) == COUNT:
                break
            await asyncio.sleep(0.01)
        names = [client.getsockname() for client in clients]
        await acceptor.close()
    finally:
        for client in clients:
            client.close()
    return Probe.made, names, acceptor


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], batch: int) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(accept_all(batch))


@pytest.mark.parametrize("batch", [1, 100])
def test_on_asyncio_each_transport_is_made_directly_without_a_task(batch: int) -> None:
    made, names, acceptor = run(asyncio.new_event_loop, batch)
    assert acceptor._direct
    assert len(made) == COUNT
    # The peer's address, given from accept(); the listener's own; no Nagle; and no task but
    # the test's own alive as each connection is made.
    assert sorted(peer for peer, _, _, _ in made) == sorted(names)
    assert all(local == made[0][1] for _, local, _, _ in made)
    assert all(nodelay == 1 for _, _, nodelay, _ in made)
    assert {tasks for _, _, _, tasks in made} == {1}


def test_on_uvloop_connections_go_through_connect_accepted_socket() -> None:
    made, names, acceptor = run(uvloop.new_event_loop, 100)
    assert not acceptor._direct
    assert sorted(peer for peer, _, _, _ in made) == sorted(names)
    # connect_accepted_socket runs as a task per connection.
    assert all(tasks >= 2 for _, _, _, tasks in made)


@pytest.mark.parametrize(("batch", "wake_ups"), [(100, 1), (1, COUNT)])
def test_a_batch_takes_every_waiting_connection_in_one_wake_up(batch: int, wake_ups: int) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        sock = listener()
        Probe.made = []
        clients = [socket.create_connection(sock.getsockname()) for _ in range(COUNT)]
        try:
            wakes = 0
            acceptor = Acceptor(loop, sock, Probe, batch=batch)
            accept = acceptor._accept

            def counted() -> None:
                nonlocal wakes
                wakes += 1
                accept()

            acceptor._accept = counted  # type: ignore[method-assign]
            await asyncio.sleep(0.05)  # every connection is in the queue before the first wake
            acceptor.start()
            for _ in range(int(SOCKET_TIMEOUT / 0.01)):
                if len(Probe.made) == COUNT:
                    break
                await asyncio.sleep(0.01)
            await acceptor.close()
            return wakes
        finally:
            for client in clients:
                client.close()

    assert asyncio.run(main()) == wake_ups
    assert len(Probe.made) == COUNT


def test_connections_accepted_before_close_are_made_before_it_returns() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        sock = listener()
        Probe.made = []
        acceptor = Acceptor(loop, sock, Probe, batch=100)
        clients = [socket.create_connection(sock.getsockname()) for _ in range(3)]
        try:
            acceptor._accept()  # accepted now; connection_made is scheduled, not yet run
            assert Probe.made == []
            await acceptor.close()
            return len(Probe.made)
        finally:
            for client in clients:
                client.close()

    assert asyncio.run(main()) == 3
