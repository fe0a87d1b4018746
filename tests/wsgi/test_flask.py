"""A real Flask application end to end, over real sockets, through every WSGI feeder."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import flask
import pytest

from tests.wsgi_feeders import WSGIUrl, client


def make_app() -> tuple[flask.Flask, threading.Event]:
    app = flask.Flask("dualgate_flask_test")
    stream_closed = threading.Event()

    @app.get("/hello/<name>")
    def hello(name: str) -> flask.Response:
        return flask.jsonify(
            greeting=f"hello {name}",
            args=flask.request.args.to_dict(flat=False),
            path=flask.request.path,
            script_root=flask.request.script_root,
            url=flask.url_for("hello", name=name),
        )

    @app.post("/json")
    def echo_json() -> flask.Response:
        data = flask.request.get_json()
        return flask.jsonify(received=data, type=flask.request.content_type)

    @app.post("/form")
    def form() -> flask.Response:
        return flask.jsonify(fields=flask.request.form.to_dict(flat=False))

    @app.post("/upload")
    def upload() -> flask.Response:
        files = {}
        for field, storage in flask.request.files.items():
            content = storage.read()
            files[field] = {
                "filename": storage.filename,
                "content_type": storage.content_type,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        return flask.jsonify(files=files, note=flask.request.form.get("note"))

    @app.get("/stream")
    def stream() -> flask.Response:
        count = int(flask.request.args.get("n", "5"))

        def generate() -> Iterator[bytes]:
            try:
                for index in range(count):
                    yield b"line %d\n" % index
            finally:
                stream_closed.set()

        return flask.Response(generate(), mimetype="text/plain")

    @app.get("/fail")
    def fail() -> flask.Response:
        raise RuntimeError("flask view failed")

    return app, stream_closed


def test_flask_json_routes(wsgi_url: WSGIUrl) -> None:
    app, _ = make_app()
    with client(wsgi_url(app)) as http:
        response = http.get("/hello/w%C3%B6rld", params={"a": ["1", "2"], "b": "x y"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        data = response.json()
        assert data["greeting"] == "hello w\xf6rld"
        assert data["args"] == {"a": ["1", "2"], "b": ["x y"]}
        assert data["path"] == "/hello/w\xf6rld"
        assert data["url"] == "/hello/w%C3%B6rld"

        posted = http.post("/json", json={"n": [1, 2, 3], "s": "\u20ac"})
        assert posted.status_code == 200
        assert posted.json() == {
            "received": {"n": [1, 2, 3], "s": "\u20ac"},
            "type": "application/json",
        }


def test_flask_under_a_root_path(wsgi_url: WSGIUrl) -> None:
    app, _ = make_app()
    with client(wsgi_url(app, root_path="/mnt")) as http:
        data = http.get("/mnt/hello/x").json()
    assert data["script_root"] == "/mnt"
    assert data["path"] == "/hello/x"
    assert data["url"] == "/mnt/hello/x"


def test_flask_form_post(wsgi_url: WSGIUrl) -> None:
    app, _ = make_app()
    with client(wsgi_url(app)) as http:
        response = http.post("/form", data={"name": "Zo\xeb", "tags": ["a", "b"], "empty": ""})
    assert response.status_code == 200
    assert response.json()["fields"] == {"name": ["Zo\xeb"], "tags": ["a", "b"], "empty": [""]}


def test_flask_multipart_upload(wsgi_url: WSGIUrl) -> None:
    app, _ = make_app()
    big = os.urandom(700_000)  # larger than the server's body buffer: streamed to the app
    small = b"small file\r\n--not-a-boundary\r\n"
    with client(wsgi_url(app)) as http:
        response = http.post(
            "/upload",
            data={"note": "two files"},
            files={
                "big": ("big.bin", big, "application/octet-stream"),
                "small": ("small.txt", small, "text/plain"),
            },
        )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["note"] == "two files"
    assert data["files"]["big"] == {
        "filename": "big.bin",
        "content_type": "application/octet-stream",
        "size": len(big),
        "sha256": hashlib.sha256(big).hexdigest(),
    }
    assert data["files"]["small"]["size"] == len(small)
    assert data["files"]["small"]["sha256"] == hashlib.sha256(small).hexdigest()


def test_flask_streaming_response(wsgi_url: WSGIUrl) -> None:
    app, stream_closed = make_app()
    with client(wsgi_url(app)) as http, http.stream("GET", "/stream?n=2000") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "content-length" not in response.headers
        lines = list(response.iter_lines())
    assert lines == [f"line {index}" for index in range(2000)]
    assert stream_closed.wait(5)


@pytest.mark.parametrize(("path", "status"), [("/nope", 404), ("/fail", 500), ("/json", 405)])
def test_flask_errors(wsgi_url: WSGIUrl, path: str, status: int) -> None:
    app, _ = make_app()
    with client(wsgi_url(app)) as http:
        response = http.get(path)
        assert response.status_code == status
        assert http.get("/hello/again").status_code == 200  # and the same client goes on
