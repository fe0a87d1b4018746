"""`--mount`: a WSGI and ASGI apps side by side under path prefixes, over real sockets."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServeFactory, ServerProcess, request

WSGI_SOURCE = """
import json

def app(environ, start_response):
    body = json.dumps({
        "app": "wsgi",
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_SOURCE = """
import json

NAME = {name!r}

async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({{"type": message["type"] + ".complete"}})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps({{
        "app": NAME,
        "root_path": scope["root_path"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
    }}).encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Three app modules in tmp_path, uniquely named; sys.path and sys.modules restored."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "wsgi": f"mount_wsgi_{suffix}",
        "v2": f"mount_asgi_v2_{suffix}",
        "root": f"mount_asgi_root_{suffix}",
    }
    (tmp_path / f"{names['wsgi']}.py").write_text(WSGI_SOURCE)
    (tmp_path / f"{names['v2']}.py").write_text(ASGI_SOURCE.format(name="asgi-v2"))
    (tmp_path / f"{names['root']}.py").write_text(ASGI_SOURCE.format(name="asgi-root"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in names.values():
        monkeypatch.delitem(sys.modules, name, raising=False)
    return names


def get(port: int, target: str) -> tuple[int, Any]:
    status, headers, body = request(
        port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii")
    )
    code = int(status.split(b" ")[1])
    is_json = headers.get(b"content-type") == b"application/json"
    return code, json.loads(body) if is_json else body


def test_longest_prefix_wins_and_each_app_sees_its_mount_point(
    serve: ServeFactory, tmp_path: Path, modules: dict[str, str]
) -> None:
    server = serve(
        None,
        mount=(
            f"/api={modules['wsgi']}:app",
            f"/={modules['root']}:application",
            f"/api/v2={modules['v2']}:application",
        ),
        app_dir=str(tmp_path),
    )
    port = server.port
    assert get(port, "/api/things?x=1") == (
        200,
        {"app": "wsgi", "script_name": "/api", "path_info": "/things", "query": "x=1"},
    )
    assert get(port, "/api") == (
        200,
        {"app": "wsgi", "script_name": "/api", "path_info": "", "query": ""},
    )
    assert get(port, "/api/a%20b") == (
        200,
        {"app": "wsgi", "script_name": "/api", "path_info": "/a b", "query": ""},
    )
    assert get(port, "/api/v2/items/%C3%A9?q=2") == (
        200,
        {"app": "asgi-v2", "root_path": "/api/v2", "path": "/api/v2/items/\u00e9", "query": "q=2"},
    )
    assert get(port, "/api/v2") == (
        200,
        {"app": "asgi-v2", "root_path": "/api/v2", "path": "/api/v2", "query": ""},
    )
    # A prefix matches whole segments only.
    assert get(port, "/apix") == (
        200,
        {"app": "asgi-root", "root_path": "", "path": "/apix", "query": ""},
    )
    assert get(port, "/api/v20") == (
        200,
        {"app": "wsgi", "script_name": "/api", "path_info": "/v20", "query": ""},
    )
    assert get(port, "/") == (200, {"app": "asgi-root", "root_path": "", "path": "/", "query": ""})


def test_no_root_mount_gives_404_when_nothing_matches(
    serve: ServeFactory, tmp_path: Path, modules: dict[str, str]
) -> None:
    server = serve(
        None,
        mount=(f"/api={modules['wsgi']}:app", f"/api/v2={modules['v2']}:application"),
        app_dir=str(tmp_path),
    )
    port = server.port
    assert get(port, "/")[0] == 404
    assert get(port, "/other/api")[0] == 404
    assert get(port, "/apix")[0] == 404
    assert get(port, "/api/x")[1]["app"] == "wsgi"
    assert get(port, "/api/v2/x")[1]["app"] == "asgi-v2"


def test_mounts_under_a_root_path(
    serve: ServeFactory, tmp_path: Path, modules: dict[str, str]
) -> None:
    server = serve(
        None,
        mount=(f"/api={modules['wsgi']}:app", f"/v2={modules['v2']}:application"),
        app_dir=str(tmp_path),
        root_path="/base",
    )
    port = server.port
    # Whether the proxy in front strips /base or not, each app sees the same mount point.
    for base in ("", "/base"):
        assert get(port, base + "/api/x") == (
            200,
            {"app": "wsgi", "script_name": "/base/api", "path_info": "/x", "query": ""},
        )
        assert get(port, base + "/v2/y") == (
            200,
            {"app": "asgi-v2", "root_path": "/base/v2", "path": "/base/v2/y", "query": ""},
        )
        assert get(port, base + "/other")[0] == 404


def test_cli_mount_flags(tmp_path: Path, modules: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "dualgate", "serve", "--port", "0", "--no-access-log"]
    argv += ["--app-dir", str(tmp_path), "--mount", f"/api={modules['wsgi']}:app"]
    argv += ["--mount", f"/={modules['root']}:application"]
    with ServerProcess(argv) as server:
        port = server.wait_for_port()
        assert get(port, "/api/q")[1] == {
            "app": "wsgi",
            "script_name": "/api",
            "path_info": "/q",
            "query": "",
        }
        assert get(port, "/q")[1] == {
            "app": "asgi-root",
            "root_path": "",
            "path": "/q",
            "query": "",
        }
        assert server.stop() == 0
