"""PEP 3333 conformance, the request side: the environ and wsgi.input, as the app observes them.

Every application here reports what it saw as JSON (or records it for the test); every
request goes over a real socket to whatever `wsgi_url` feeds the application through.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment
from wsgiref.validate import validator

import pytest

from tests.wsgi_feeders import RawConnection, WSGIUrl, client, raw_request, url_port

_STRING_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
)


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode("utf-8")
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _report_environ(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Reports every str value of the environ, the type of every value, and the wsgi.* keys."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    stream_input = environ["wsgi.input"]
    errors = environ["wsgi.errors"]
    errors.write("")  # must be writable with a str
    errors.flush()
    report = {
        "strings": {key: value for key, value in environ.items() if isinstance(value, str)},
        "types": {key: type(value).__name__ for key, value in environ.items()},
        "version": list(environ["wsgi.version"]),
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ.get("wsgi.input_terminated"),
        "input_methods": [
            name
            for name in ("read", "readline", "readlines", "__iter__")
            if callable(getattr(stream_input, name, None))
        ],
        "errors_methods": [
            name for name in ("write", "writelines", "flush") if callable(getattr(errors, name))
        ],
        "body": body.decode("latin-1"),
    }
    return _json(start_response, report)


report_environ = validator(_report_environ)


def test_required_environ_keys_and_types(wsgi_url: WSGIUrl) -> None:
    url = wsgi_url(report_environ)
    with client(url) as http:
        response = http.post(
            "/some/path?a=1&b=two",
            content=b"hello",
            headers={"Content-Type": "text/x-test"},
        )
    assert response.status_code == 200, response.text
    report = response.json()
    strings, types = report["strings"], report["types"]
    for key in _STRING_KEYS:
        assert types.get(key) == "str", (key, types.get(key))
    assert strings["REQUEST_METHOD"] == "POST"
    assert strings["SCRIPT_NAME"] == ""
    assert strings["PATH_INFO"] == "/some/path"
    assert strings["QUERY_STRING"] == "a=1&b=two"
    assert strings["CONTENT_TYPE"] == "text/x-test"
    assert strings["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in types
    assert "HTTP_CONTENT_LENGTH" not in types
    assert strings["SERVER_NAME"]
    assert strings["SERVER_PORT"] == str(url_port(url))
    assert strings["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert strings["REMOTE_ADDR"] == "127.0.0.1"
    assert strings["HTTP_HOST"] == f"127.0.0.1:{url_port(url)}"
    # Every CGI-style key (no dot) is a native str.
    assert all(kind == "str" for key, kind in types.items() if "." not in key), types
    assert report["version"] == [1, 0]
    assert strings["wsgi.url_scheme"] == "http"
    assert report["multithread"] is True
    assert isinstance(report["multiprocess"], bool)
    assert report["run_once"] is False
    assert report["input_terminated"] is True
    assert report["input_methods"] == ["read", "readline", "readlines", "__iter__"]
    assert report["errors_methods"] == ["write", "writelines", "flush"]
    assert report["body"] == "hello"


def test_get_without_body_has_no_content_length_or_an_empty_one(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get("/").json()
    assert report["strings"]["REQUEST_METHOD"] == "GET"
    assert report["strings"].get("CONTENT_LENGTH", "") in ("", "0")
    assert report["strings"]["QUERY_STRING"] == ""
    assert report["body"] == ""


def test_http_1_0_request_protocol(wsgi_url: WSGIUrl) -> None:
    raw = raw_request(wsgi_url(report_environ), b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), raw[:200]
    assert b" 200 " in head.split(b"\r\n")[0]
    report = json.loads(body)
    assert report["strings"]["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert report["strings"]["PATH_INFO"] == "/old"


@pytest.mark.parametrize(
    ("raw_path", "path_info"),
    [
        ("/caf%C3%A9", "/caf\xc3\xa9"),  # UTF-8 bytes, each carried as one latin-1 char
        ("/a%2Fb", "/a/b"),  # %2F is decoded too: PATH_INFO cannot tell it from /
        ("/%41%42c", "/ABc"),
        ("/sp%20ace/", "/sp ace/"),
        ("/latin%E9", "/latin\xe9"),  # not UTF-8: still one byte, one char
        ("/plain", "/plain"),
    ],
)
def test_path_info_is_percent_decoded_latin1(
    wsgi_url: WSGIUrl, raw_path: str, path_info: str
) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get(raw_path).json()
    assert report["strings"]["PATH_INFO"] == path_info


def test_query_string_is_raw(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get("/q?q=a%20b&x=%2F+y&e=caf%C3%A9&empty=&flag").json()
    assert report["strings"]["QUERY_STRING"] == "q=a%20b&x=%2F+y&e=caf%C3%A9&empty=&flag"
    assert report["strings"]["PATH_INFO"] == "/q"


@pytest.mark.parametrize(
    ("path", "path_info"),
    [("/app/x", "/x"), ("/app/x/y%2Fz", "/x/y/z"), ("/app", ""), ("/app/", "/")],
)
def test_script_name_from_root_path(wsgi_url: WSGIUrl, path: str, path_info: str) -> None:
    url = wsgi_url(report_environ, root_path="/app")
    with client(url) as http:
        report = http.get(path).json()
    assert report["strings"]["SCRIPT_NAME"] == "/app"
    assert report["strings"]["PATH_INFO"] == path_info


def test_repeated_headers_are_joined(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get(
            "/",
            headers=[("X-Multi", "a"), ("X-Multi", "b, c"), ("X-Single", "s"), ("X-Multi", "d")],
        ).json()
    assert report["strings"]["HTTP_X_MULTI"] == "a, b, c, d"
    assert report["strings"]["HTTP_X_SINGLE"] == "s"


def test_headers_with_underscores_are_dropped(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get("/", headers=[("X_Forwarded_For", "6.6.6.6"), ("X-Real", "ok")]).json()
    assert "HTTP_X_FORWARDED_FOR" not in report["strings"]
    assert report["strings"]["HTTP_X_REAL"] == "ok"


def test_header_names_are_upper_cased_with_underscores(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(report_environ)) as http:
        report = http.get("/", headers={b"x-lower-case": b"v\xe9"}).json()
    # Header values are latin-1 decoded native strings.
    assert report["strings"]["HTTP_X_LOWER_CASE"] == "v\xe9"


# -- wsgi.input -------------------------------------------------------------------------

BODY = b"line1\nline2\r\n\nlast-no-newline"


def _input_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Runs the read pattern named by QUERY_STRING; reports each result (latin-1)."""
    stream = environ["wsgi.input"]
    mode = environ["QUERY_STRING"]
    results: list[Any]
    if mode == "read":
        results = [stream.read(), stream.read(), stream.read(10)]
    elif mode == "read_n":
        results = [stream.read(3), stream.read(0), stream.read(100), stream.read(1)]
        results.append(stream.read(-1))
    elif mode == "read_none":
        results = [stream.read(None), stream.read(None)]
    elif mode == "readline":
        results = [stream.readline() for _ in range(6)]
    elif mode == "readline_n":
        results = [stream.readline(3), stream.readline(3), stream.readline(0), stream.readline()]
        results += [stream.readline(100), stream.readline(-1), stream.readline(5)]
        results += [stream.readline(5), stream.readline(5), stream.readline()]
    elif mode == "readlines":
        results = [*stream.readlines(), "|", *stream.readlines()]
    elif mode == "iterate":
        results = [*stream, "|", stream.read(5)]
    else:
        raise AssertionError(mode)
    report = [item if isinstance(item, str) else item.decode("latin-1") for item in results]
    types = sorted({type(item).__name__ for item in results if not isinstance(item, str)})
    return _json(start_response, {"results": report, "types": types})


EXPECTED: dict[str, list[bytes | str]] = {
    "read": [BODY, b"", b""],
    "read_n": [b"lin", b"", BODY[3:], b"", b""],
    "read_none": [BODY, b""],
    "readline": [b"line1\n", b"line2\r\n", b"\n", b"last-no-newline", b"", b""],
    "readline_n": [
        b"lin",
        b"e1\n",
        b"",
        b"line2\r\n",
        b"\n",
        b"last-no-newline",
        b"",
        b"",
        b"",
        b"",
    ],
    "readlines": [b"line1\n", b"line2\r\n", b"\n", b"last-no-newline", "|"],
    "iterate": [b"line1\n", b"line2\r\n", b"\n", b"last-no-newline", "|", b""],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_wsgi_input_read_patterns(wsgi_url: WSGIUrl, mode: str) -> None:
    # wsgiref's validator allows read() only with a size; the size-less patterns run bare.
    app = _input_app if mode in ("read", "read_none") else validator(_input_app)
    with client(wsgi_url(app)) as http:
        response = http.post(f"/?{mode}", content=BODY)
    assert response.status_code == 200, response.text
    report = response.json()
    expected = [
        item if isinstance(item, str) else item.decode("latin-1") for item in EXPECTED[mode]
    ]
    assert report["results"] == expected
    assert report["types"] == ["bytes"]


def test_readline_n_splits_long_lines(wsgi_url: WSGIUrl) -> None:
    with client(wsgi_url(validator(_input_app))) as http:
        report = http.post("/?readline_n", content=b"abcdefghij\nk").json()
    assert report["results"] == ["abc", "def", "", "ghij\n", "k", "", "", "", "", ""]


def _hash_input_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Reads the body in the way QUERY_STRING names; reports size, line count and sha256."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = lines = 0
    if environ["QUERY_STRING"] == "lines":
        for line in stream:
            digest.update(line)
            size += len(line)
            lines += 1
    else:
        while chunk := stream.read(10007):
            digest.update(chunk)
            size += len(chunk)
        assert stream.read(10007) == b""
    return _json(
        start_response,
        {
            "size": size,
            "lines": lines,
            "sha256": digest.hexdigest(),
            "content_length": environ.get("CONTENT_LENGTH"),
        },
    )


def _big_body() -> bytes:
    # ~1.3 MB of lines of varying length: crosses any buffer boundary several times.
    return b"".join(b"%d:" % i + b"x" * (i % 997) + b"\n" for i in range(2600))


@pytest.mark.parametrize("how", ["chunks", "lines"])
def test_large_body_streams_through_wsgi_input(wsgi_url: WSGIUrl, how: str) -> None:
    body = _big_body()
    with client(wsgi_url(validator(_hash_input_app))) as http:
        report = http.post(f"/?{how}", content=body).json()
    assert report["size"] == len(body)
    assert report["sha256"] == hashlib.sha256(body).hexdigest()
    assert report["content_length"] == str(len(body))
    if how == "lines":
        assert report["lines"] == 2600


def test_chunked_request_body_reads_to_the_end(wsgi_url: WSGIUrl) -> None:
    body = _big_body()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 50_000):
            yield body[start : start + 50_000]

    with client(wsgi_url(validator(_hash_input_app))) as http:
        response = http.post("/?chunks", content=pieces())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    report = response.json()
    assert report["size"] == len(body)
    assert report["sha256"] == hashlib.sha256(body).hexdigest()
    # No Content-Length was sent: CONTENT_LENGTH is absent or empty; wsgi.input ends anyway.
    assert report["content_length"] in (None, "")


def test_errors_stream_accepts_text(wsgi_url: WSGIUrl) -> None:
    seen: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        errors = environ["wsgi.errors"]
        errors.write("wsgi.errors test line\n")
        errors.writelines(["one\n", "two\n"])
        errors.flush()
        seen.append("written")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with client(wsgi_url(validator(app))) as http:
        assert http.get("/").text == "ok"
    assert seen == ["written"]


def test_cookies_are_joined_with_semicolons(wsgi_url: WSGIUrl) -> None:
    # RFC 9113 8.2.3 / RFC 6265 5.4: several Cookie fields make one "; "-separated list.
    with client(wsgi_url(report_environ)) as http:
        report = http.get("/", headers=[("Cookie", "a=1"), ("Cookie", "b=2")]).json()
    assert report["strings"]["HTTP_COOKIE"] == "a=1; b=2"


def test_absolute_form_target(wsgi_url: WSGIUrl) -> None:
    raw = raw_request(
        wsgi_url(report_environ),
        b"GET http://example.test:8080/abs/p%20q?x=1 HTTP/1.1\r\n"
        b"Host: ignored.test\r\nConnection: close\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:300]
    strings = json.loads(body)["strings"]
    assert strings["PATH_INFO"] == "/abs/p q"
    assert strings["QUERY_STRING"] == "x=1"
    # RFC 9112 3.2.2: the target's authority replaces the Host header.
    assert strings["HTTP_HOST"] == "example.test:8080"


def test_expect_100_continue_is_answered_when_the_app_reads(wsgi_url: WSGIUrl) -> None:
    url = wsgi_url(validator(_hash_input_app))
    with RawConnection(url) as connection:
        connection.send(
            b"POST /?chunks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = connection.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        connection.send(b"hello")
        response = connection.read_response()
    assert response.status == 200
    report = json.loads(response.body)
    assert report["size"] == 5
    assert report["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_client_gone_mid_upload_raises_into_the_app(wsgi_url: WSGIUrl) -> None:
    outcome: list[object] = []
    done = threading.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        total = 0
        try:
            while chunk := stream.read(65536):
                total += len(chunk)
            outcome.append(total)  # a silent EOF: the app would take a cut body for whole
        except Exception as exc:
            outcome.append(exc)
        finally:
            done.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    with RawConnection(wsgi_url(app)) as connection:
        connection.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        connection.send(b"z" * 1_000_000)
    assert done.wait(5), "the app was still blocked in wsgi.input.read()"
    assert outcome and isinstance(outcome[0], OSError), outcome
