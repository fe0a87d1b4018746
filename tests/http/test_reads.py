"""How an HTTP connection reads from its socket under the asyncio loop.

asyncio hands a plain Protocol a fresh bytes object per read, made as a 256 KiB buffer and
shrunk to what arrived. Freed 256 KiB buffers raise glibc's mmap threshold, so later ones
come from the heap and, shrunk around the small objects allocated meanwhile, fragment it:
the soak (python -m benchmarks.soak --server-arg=--loop=asyncio) measured the server's RSS
growing 18 MiB a minute under its traffic mix, 20 MiB in a minute of garbage connections
alone, and flat with uvloop or a fixed mmap threshold. A BufferedProtocol reads into one
reused buffer instead.
"""

from __future__ import annotations

import tracemalloc

import pytest

from tests.conftest import Reader, ServeFactory, connect, ok_app

# Every server here runs once with each request head parser (h11, httptools).
pytestmark = pytest.mark.usefixtures("both_parsers")

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_reads_reuse_one_buffer_instead_of_a_fresh_256_kib_each(serve: ServeFactory) -> None:
    server = serve(ok_app, loop="asyncio")
    with connect(server.port) as sock:
        reader = Reader(sock)
        sock.sendall(GET)
        reader.read_response()  # connection and buffers set up before measuring
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(50):
                sock.sendall(GET)
                status, _, _ = reader.read_response()
                assert status == b"HTTP/1.1 200 OK"
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
    # The client's own reads take 64 KiB at a time; a server read of 256 KiB would show.
    assert peak < 160 * 1024, f"{peak} bytes at the peak"


def test_uvloop_reads_into_its_own_buffer_and_asyncio_into_the_shared_one(
    serve: ServeFactory,
) -> None:
    import asyncio

    from dualgate.http.connection import HTTPProtocol

    for loop, buffered in (("asyncio", True), ("uvloop", False)):
        server = serve(ok_app, loop=loop)
        state = server.state
        assert state is not None
        with connect(server.port) as sock:
            sock.sendall(GET)
            assert Reader(sock).read_response()[0] == b"HTTP/1.1 200 OK"
            (connection,) = state.connections
        # The loops ask isinstance(protocol, BufferedProtocol): uvloop then calls get_buffer
        # and buffer_updated, two Python calls per read for a buffer it has itself.
        assert isinstance(connection, asyncio.BufferedProtocol) is buffered, loop
        assert isinstance(connection, HTTPProtocol)
