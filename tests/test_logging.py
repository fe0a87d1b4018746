"""What operators expect of the logs, over real `python -m dualgate serve` processes: the
application's logging respected, --log-config (JSON, YAML, INI), the access record's fields for
a JSON formatter, --access-log-format atoms, health checks left out, a refusal before the
request line in the same shape, PIDs under --workers, one line and exit 2 for a bad file.
The format's own rules (atoms, escaping, nothing done for a record not emitted) in-process."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import dualgate
from dualgate import version
from dualgate.logs import ACCESS_FIELDS, AccessFormat, access_logger, log_access, use_access_format
from tests.conftest import SOCKET_TIMEOUT, ServeFactory, connect, read_until_closed
from tests.processes import PID_APP, Process, _alive, get, parse, wait_until
from tests.ws_support import echo_app, open_websocket

SERVING = re.compile(r"Serving .* on http://127\.0\.0\.1:(\d+)")

HELLO_APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Answer", 'say "hi"')])
    return [b"hello"]
"""

# An application that configures logging when it is imported, as Django's settings do: one
# root handler of its own, dualgate's loggers left enabled.
APP_WITH_LOGGING = (
    """
import logging.config

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"app": {"format": "APP|%(name)s|%(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                            "formatter": "app"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
})
"""
    + HELLO_APP
)

# A JSON formatter of the kind python-json-logger is: every access field, as attributes.
JSON_FORMATTER = f"""
import json, logging, os

FIELDS = {ACCESS_FIELDS!r}

class JSONFormatter(logging.Formatter):
    def format(self, record):
        data = {{"logger": record.name, "message": record.getMessage(), "pid": record.process}}
        data.update({{name: getattr(record, name) for name in FIELDS if hasattr(record, name)}})
        return "JSON " + json.dumps(data)
"""

JSON_CONFIG = {
    "version": 1,
    # dualgate's own loggers stay enabled whatever this says (the default, True, here).
    "formatters": {"json": {"()": "jsonformatter.JSONFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "json",
        }
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
}

YAML_CONFIG = """
version: 1
disable_existing_loggers: false
formatters:
  plain: {format: "YAML|%(name)s|%(message)s"}
handlers:
  stderr: {class: logging.StreamHandler, stream: "ext://sys.stderr", formatter: plain}
loggers:
  dualgate.access: {handlers: [stderr], propagate: false}
  dualgate.error: {handlers: [stderr], propagate: false, level: DEBUG}
"""

INI_CONFIG = """
[loggers]
keys=root

[handlers]
keys=stderr

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=stderr

[handler_stderr]
class=StreamHandler
args=(sys.stderr,)
formatter=plain

[formatter_plain]
format=INI|%(name)s|%(message)s
"""


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "dualgate", "serve", *args, "--port", "0", "--loop", "asyncio"]


@contextmanager
def serving(directory: Path, *args: str) -> Iterator[tuple[Process, int]]:
    """`dualgate serve ARGS` in `directory` (on sys.path: `python -m` puts it there), its port
    read from the start-up line; stopped afterwards, so `process.stderr` is then complete."""
    process = Process(_argv(*args), directory)
    try:
        found = SERVING.search(process.wait_for(SERVING.pattern))
        assert found is not None
        yield process, int(found.group(1))
    finally:
        process.stop()


def _request(port: int, target: str = "/", headers: Sequence[bytes] = ()) -> bytes:
    with connect(port) as sock:
        head = [f"GET {target} HTTP/1.1".encode(), b"Host: x", b"Connection: close", *headers]
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        return read_until_closed(sock)


def _refused(port: int) -> bytes:
    """A request line h11 cannot read: refused before there is any request."""
    with connect(port) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        return read_until_closed(sock)


def _lines(process: Process, mark: str) -> list[str]:
    return [line for line in process.stderr.splitlines() if mark in line]


def test_an_app_that_configures_logging_at_import_gets_every_line_once(tmp_path: Path) -> None:
    (tmp_path / "loggingapp.py").write_text(APP_WITH_LOGGING)
    with serving(tmp_path, "loggingapp:application") as (process, port):
        assert _request(port, "/once").startswith(b"HTTP/1.1 200 OK")
        process.wait_for(r"APP\|dualgate\.access\|.*/once")
    access = _lines(process, "/once")
    assert len(access) == 1, process.stderr
    assert re.fullmatch(
        r'APP\|dualgate\.access\|127\.0\.0\.1:\d+ "GET /once HTTP/1\.1" 200 5 '
        r"[\d.]+ms",
        access[0],
    ), access
    # The start-up line comes after the import: the app's handler writes it, and only it.
    assert len(_lines(process, "Serving")) == 1, process.stderr
    assert _lines(process, "Serving")[0].startswith("APP|dualgate.error|"), process.stderr
    assert "[dualgate." not in process.stderr, process.stderr


def test_the_default_line_stays_and_the_start_up_line_names_the_version(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    with serving(tmp_path, "hello:application") as (process, port):
        _request(port, "/plain?x=1")
        line = process.wait_for("/plain")
    assert re.fullmatch(
        r"\S+ \S+ \[dualgate\.access\] INFO 127\.0\.0\.1:\d+ "
        r'"GET /plain\?x=1 HTTP/1\.1" 200 5 \d+\.\dms',
        line.rstrip("\n"),
    ), line
    # One process: no PID in the line.
    assert f"dualgate {dualgate.__version__}: Serving WSGI app hello:application" in process.stderr
    assert dualgate.__version__ == version.__version__


def test_a_json_formatter_from_log_config_gets_the_access_fields(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    (tmp_path / "jsonformatter.py").write_text(JSON_FORMATTER)
    (tmp_path / "log.json").write_text(json.dumps(JSON_CONFIG))
    with serving(tmp_path, "hello:application", "--log-config", "log.json") as (process, port):
        _request(
            port,
            "/a/b?c=d",
            [b"User-Agent: probe/1.0", b"Referer: http://example.com/", b"X-Request-ID: req-42"],
        )
        _request(port, "/bare")
        _refused(port)
        process.wait_for(r'"status_code": 400')
    records = [json.loads(line[5:]) for line in _lines(process, "JSON {")]
    access = [record for record in records if record["logger"] == "dualgate.access"]
    assert len(access) == 3, process.stderr
    full, bare, refused = access
    assert re.fullmatch(r"127\.0\.0\.1:\d+", full["client_addr"]), full
    assert full["method"] == "GET"
    assert full["path"] == "/a/b?c=d"
    assert full["http_version"] == "1.1"
    assert full["status_code"] == 200
    assert full["bytes"] == 5
    assert isinstance(full["duration_ms"], float) and full["duration_ms"] >= 0
    assert (full["user_agent"], full["referer"], full["request_id"]) == (
        "probe/1.0",
        "http://example.com/",
        "req-42",
    )
    assert (bare["user_agent"], bare["referer"], bare["request_id"]) == ("-", "-", "-")
    # Refused before a request line: the same fields, "-" where nothing is known.
    assert set(refused) == set(full)
    assert refused["client_addr"].startswith("127.0.0.1:")
    assert (refused["method"], refused["path"], refused["http_version"]) == ("-", "-", "-")
    assert (refused["status_code"], refused["bytes"], refused["duration_ms"]) == (400, 0, "-")
    assert re.fullmatch(r'127\.0\.0\.1:\d+ "- - HTTP/-" 400 0 -', refused["message"]), refused
    # The file's handler wrote every line, and dualgate's own none.
    assert any("Serving WSGI app" in record["message"] for record in records)
    assert "[dualgate." not in process.stderr, process.stderr


def test_log_config_yaml_routes_and_its_levels_win(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    (tmp_path / "log.yaml").write_text(YAML_CONFIG)
    # The file gives dualgate.error DEBUG: the start-up line (INFO) is written although
    # --log-level says warning.
    args = ("hello:application", "--log-config", "log.yaml", "--log-level", "warning")
    with serving(tmp_path, *args) as (process, port):
        _request(port, "/yaml")
        process.wait_for(r"YAML\|dualgate\.access\|.*/yaml")
    assert len(_lines(process, "/yaml")) == 1, process.stderr
    assert _lines(process, "Serving")[0].startswith("YAML|dualgate.error|"), process.stderr


def test_log_config_ini(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    (tmp_path / "log.ini").write_text(INI_CONFIG)
    with serving(tmp_path, "hello:application", "--log-config", "log.ini") as (process, port):
        _request(port, "/ini")
        process.wait_for(r"INI\|dualgate\.access\|.*/ini")
    assert len(_lines(process, "/ini")) == 1, process.stderr
    assert _lines(process, "Serving")[0].startswith("INI|dualgate.error|"), process.stderr


def test_access_log_format_atoms(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    atoms = (
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s %(B)s "%(f)s" "%(a)s" '
        "T=%(T)s D=%(D)s M=%(M)s L=%(L)s %(p)s %(m)s %(U)s q=%(q)s %(H)s "
        'id=%({x-request-id}i)s answer="%({X-Answer}o)s" none=%({x-none}i)s 100%%'
    )
    with serving(tmp_path, "hello:application", "--access-log-format", atoms) as (process, port):
        _request(
            port,
            "/p/q?r=1",
            [
                b"Authorization: Basic Ym9iOnNlY3JldA==",  # bob:secret
                b"Referer: http://ref/",
                'User-Agent: agent "quoted" \\ \xe9'.encode(),
                b"X-Request-ID: rid-7",
            ],
        )
        line = process.wait_for("/p/q").rstrip("\n")
    pid = line.split("<")[1].split(">")[0]
    message = line.split("[dualgate.access] INFO ", 1)[1]
    expected = (
        r"127\.0\.0\.1 - bob \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /p/q\?r=1 HTTP/1\.1" 200 5 5 "http://ref/" '
        r'"agent \\"quoted\\" \\\\ \\xc3\\xa9" '
        r"T=0 D=(\d+) M=(\d+) L=0\.(\d{6}) <\d+> GET /p/q q=r=1 HTTP/1\.1 "
        r'id=rid-7 answer="say \\"hi\\"" none=- 100%'
    )
    found = re.fullmatch(expected, message)
    assert found is not None, message
    micros, millis, fraction = (int(group) for group in found.groups())
    assert micros == int(fraction) and millis == micros // 1000, message
    assert pid.isdigit()


def test_health_checks_are_not_access_logged(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    with serving(tmp_path, "hello:application", "--health-path", "/healthz") as (process, port):
        assert _request(port, "/healthz").startswith(b"HTTP/1.1 200")
        assert _request(port, "/healthz?verbose=1").startswith(b"HTTP/1.1 200")
        # After the probes, on the same server: once its line is there, theirs would be too.
        _request(port, "/healthz-not")
        _request(port, "/after")
        process.wait_for("/after")
    assert _lines(process, "/healthz-not"), process.stderr
    assert not [line for line in _lines(process, "/healthz") if "/healthz-not" not in line]


def test_a_refusal_before_the_request_line_logs_in_the_same_shape(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    with serving(tmp_path, "hello:application") as (process, port):
        assert _refused(port).startswith(b"HTTP/1.1 400")
        line = process.wait_for(r"\[dualgate\.access\]").rstrip("\n")
    assert re.fullmatch(
        r'\S+ \S+ \[dualgate\.access\] INFO 127\.0\.0\.1:\d+ "- - HTTP/-" 400 0 -', line
    ), line


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_with_workers_every_line_names_its_process(tmp_path: Path, start_method: str) -> None:
    (tmp_path / "pidapp.py").write_text(PID_APP.format(version="1"))
    argv = _argv("pidapp:application", "--workers", "2", "--start-method", start_method)
    process = Process(argv, tmp_path)
    workers: set[int] = set()
    try:
        port = process.port()
        process.wait_for("2 worker\\(s\\) ready")
        workers = process.children()
        status, _, body = get(port, "/pid")
        assert status == b"HTTP/1.1 200 OK"
        served_by = parse(body).pid
        process.wait_for(r"/pid HTTP")
    finally:
        process.stop()
        wait_until(lambda: not any(_alive(pid) for pid in workers), SOCKET_TIMEOUT, "gone")
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    pids = {process.pid, *workers}
    for line in lines:
        found = re.match(r"\S+ \S+ \[(\d+)\] \[dualgate\.(error|access)\] ", line)
        assert found is not None and int(found.group(1)) in pids, (line, pids)
    (access,) = [line for line in lines if "/pid HTTP" in line]
    assert f"[{served_by}] [dualgate.access]" in access
    version_line = f"dualgate {dualgate.__version__}: Supervisor {process.pid} listening on"
    assert f"[{process.pid}] [dualgate.error] INFO {version_line}" in process.stderr


BAD_LOG_CONFIGS = {
    "truncated.json": ('{"version": 1,', "JSONDecodeError"),
    "list.json": ("[1, 2]", "holds a list, not a logging.config.dictConfig mapping"),
    "noversion.json": ("{}", "dictionary doesn't specify a version"),
    "handler.json": (
        json.dumps({"version": 1, "handlers": {"h": {"class": "nowhere.Handler"}}, "root": {}}),
        "Unable to configure handler 'h': Cannot resolve 'nowhere.Handler'",
    ),
    "broken.yaml": ("version: [1\n", "while parsing a flow sequence"),
    "sections.ini": ("[loggers]\nkeys=root\n", "KeyError"),
    "absent.json": (None, "no such file"),
    "log.txt": ("", "the file's suffix tells its kind: .json (dictConfig)"),
}


@pytest.mark.parametrize("name", sorted(BAD_LOG_CONFIGS))
def test_a_bad_log_config_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    content, expected = BAD_LOG_CONFIGS[name]
    (tmp_path / "hello.py").write_text(HELLO_APP)
    if content is not None:
        (tmp_path / name).write_text(content)
    result = subprocess.run(
        _argv("hello:application", "--log-config", name),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dualgate: error: --log-config {name}: "), lines
    assert expected in lines[0], lines


def test_a_bad_access_log_format_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(HELLO_APP)
    result = subprocess.run(
        _argv("hello:application", "--access-log-format", "%(h)s %(nope)s"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "dualgate: error: --access-log-format: unknown atom %(nope)s"
    ), result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- the format's rules, in-process -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("%(x)s", "unknown atom %(x)s"),
        ("%(s)d", "atoms are written %(s)s"),
        ("%(h)s 100%", "use %(atom)s for an atom and %% for a percent sign"),
        ("%s", "use %(atom)s"),
        ("%({x}e)s", "unknown atom"),  # gunicorn's environ atom: no environ under ASGI
    ],
)
def test_access_format_refuses_what_it_cannot_write(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        AccessFormat(text)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    handler = _Records()
    level, propagate = access_logger.level, access_logger.propagate
    access_logger.addHandler(handler)
    access_logger.propagate = False
    try:
        yield handler.records
    finally:
        access_logger.removeHandler(handler)
        access_logger.setLevel(level)
        access_logger.propagate = propagate
        use_access_format(None)


class _Untouchable(Sequence[tuple[bytes, bytes]]):
    """Headers that fail the test if anything reads them."""

    def __getitem__(self, index: object) -> tuple[bytes, bytes]:  # type: ignore[override]
        raise AssertionError("headers read for a record that is not emitted")

    def __len__(self) -> int:
        raise AssertionError("headers read for a record that is not emitted")


def test_nothing_is_built_for_a_record_that_is_not_emitted(
    records: list[logging.LogRecord],
) -> None:
    access_logger.setLevel(logging.CRITICAL + 1)
    log_access(("1.2.3.4", 5), b"GET", b"/", b"1.1", 200, 0, 0.0, _Untouchable())
    assert records == []
    access_logger.setLevel(logging.INFO)
    with pytest.raises(AssertionError, match="not emitted"):
        log_access(("1.2.3.4", 5), b"GET", b"/", b"1.1", 200, 0, 0.0, _Untouchable())


def test_the_line_is_formatted_only_by_a_handler_that_writes_it(
    records: list[logging.LogRecord],
) -> None:
    access_logger.setLevel(logging.INFO)
    use_access_format(AccessFormat('%(h)s "%({x-forwarded-for}i)s"'))
    headers = [(b"x-forwarded-for", b'a"b\\c\x01')]
    log_access(("::1", None), b"GET", b"/", b"1.1", 200, 0, None, headers)
    (record,) = records
    # Kept as a mapping of atoms until then; the same record gives the same line every time.
    assert record.msg == '%(h)s "%({x-forwarded-for}i)s"'
    assert record.getMessage() == '::1 "a\\"b\\\\c\\x01"'
    assert record.client_addr == "::1"  # type: ignore[attr-defined]
    assert record.duration_ms == "-"  # type: ignore[attr-defined]


def test_a_websocket_handshake_record_carries_the_request_headers(
    records: list[logging.LogRecord], serve: ServeFactory
) -> None:
    server = serve(echo_app(), access_log=True)
    with open_websocket(server.port, "/ws?room=1", "X-Request-ID: ws-1", "User-Agent: wsc/2"):
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not records and time.monotonic() < deadline:
            time.sleep(0.01)
    (record,) = records
    fields = {name: getattr(record, name) for name in ACCESS_FIELDS}
    assert fields["method"] == "GET"
    assert fields["path"] == "/ws?room=1"
    assert fields["status_code"] == 101
    assert (fields["request_id"], fields["user_agent"], fields["referer"]) == ("ws-1", "wsc/2", "-")
