"""wsgi.file_wrapper on each event loop dualgate runs on (server only: `loop` is its setting).

The conformance tests run the server on asyncio; `--loop auto` picks uvloop when installed,
whose loop has no working `sendfile`, so the file has to go out another way there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from tests.conftest import ServeFactory
from tests.wsgi_feeders import RawConnection, fetch

# uvloop is in the test extra: production picks it when installed (--loop auto).
LOOPS = ["asyncio", "uvloop"]


class FileApp:
    """Serves `path` with wsgi.file_wrapper; QUERY_STRING is "CONTENT_LENGTH,SEEK"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened: list[Any] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length, _, seek = environ["QUERY_STRING"].partition(",")
        file = self.path.open("rb")
        self.opened.append(file)
        file.seek(int(seek or 0))
        headers = [("Content-Type", "application/octet-stream")]
        if length:
            headers.append(("Content-Length", length))
        start_response("200 OK", headers)
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](file)
        return wrapper

    def assert_all_closed(self) -> None:
        deadline = time.monotonic() + 5
        while not all(file.closed for file in self.opened) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.opened and all(file.closed for file in self.opened)


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_on_each_loop(serve: ServeFactory, tmp_path: Path, loop: str) -> None:
    data = os.urandom(3_000_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    app = FileApp(path)
    url = f"http://127.0.0.1:{serve(app, loop=loop).port}"

    response = fetch(url, "GET", "/")
    assert response.headers.get("content-length") == str(len(data))
    assert response.body == data
    assert response.complete

    with RawConnection(url) as connection:
        for query in ("1000", ",5000", "1000,5000"):  # truncated; from an offset; both
            connection.request("GET", f"/?{query}")
            response = connection.read_response()
            length, _, seek = query.partition(",")
            start = int(seek or 0)
            end = start + int(length) if length else len(data)
            assert response.body == data[start:end], query
            assert response.complete

    response = fetch(url, "GET", f"/?{len(data) + 10}")  # the file is shorter than declared
    assert response.body == data
    assert not response.complete

    with RawConnection(url) as connection:  # the client leaves mid-file
        connection.request("GET", "/")
        connection.read_at_least(100_000)
    app.assert_all_closed()
