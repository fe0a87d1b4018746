"""The benchmark harness's own parts: CPU time of a server's process tree, the CPU column of the
report, how launchers read a server's --help to pick a parser or skip a variant, and the
idle-connection memory measure (`benchmarks.idle_memory`), run small against dualgate."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from benchmarks import idle_memory, procs, report, servers
from benchmarks.measurement import Measurement

ROOT = Path(__file__).resolve().parent.parent

# A parent that burns CPU itself, then runs a child that burns CPU and waits for it: the
# child's time is then only in the parent's cutime/cstime.
_TREE = textwrap.dedent(
    """
    import subprocess, sys, time

    def spin(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    spin(0.2)
    subprocess.run([sys.executable, "-c", {child!r}], check=True)
    print("done", flush=True)
    time.sleep(30)
    """
)
_CHILD = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_cpu_seconds_counts_the_tree_and_children_already_reaped() -> None:
    proc = procs.spawn(
        [sys.executable, "-c", _TREE.format(child=_CHILD)], cpus=None, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"done\n"
        used = procs.cpu_seconds(proc.pid)
        assert used is not None
        # 0.2 s in the parent and 0.3 s in the reaped child, less one tick each of rounding.
        assert used >= 0.48
    finally:
        procs.stop(proc, grace=2.0)
        if proc.stdout is not None:
            proc.stdout.close()
    assert procs.cpu_seconds(proc.pid) is None  # nothing left in that session


def _m(unit: str, value: float, seconds: float, requests: int) -> Measurement:
    return Measurement(value, unit, seconds, requests, 0)


def test_cpu_per_unit_of_work() -> None:
    assert report.cpu_us(_m("req/s", 1000, 2.0, 2000), 0.1) == pytest.approx(50.0)
    assert report.cpu_us(_m("msg/s", 500, 1.0, 500), 0.01) == pytest.approx(20.0)
    # A transfer: 200 MiB at 100 MiB/s is 2 s; 0.5 CPU s of it is 2,500 µs per MiB.
    assert report.cpu_us(_m("MiB/s", 100.0, 2.0, 1), 0.5) == pytest.approx(2500.0)
    assert report.cpu_us(_m("req/s", 0, 1.0, 0), 0.1) is None  # nothing completed
    assert report.cpu_us(_m("req/s", 1000, 1.0, 1000), None) is None  # not measured


def _sample(rnd: int, server: str, requests: int, cpu: float) -> report.Sample:
    m = _m("req/s", float(requests), 1.0, requests)
    return report.Sample(rnd, server, "hello", "ka-c10", m, 1024, 1, cpu)


def test_cpu_is_a_median_over_rounds_with_a_ratio_to_wsgiref_per_round() -> None:
    samples = [
        _sample(0, "wsgiref", 1000, 0.10),  # 100 µs
        _sample(1, "wsgiref", 1000, 0.20),  # 200 µs
        _sample(2, "wsgiref", 1000, 0.10),
        _sample(0, "dualgate", 2000, 0.10),  # 50 µs, 0.5x
        _sample(1, "dualgate", 2000, 0.10),  # 50 µs, 0.25x: same work in a disturbed round
        _sample(2, "dualgate", 2000, 0.16),  # 80 µs, 0.8x
    ]
    rows = {r.server: r for r in report.summarise(samples)}
    assert rows["dualgate"].cpu_us == pytest.approx(50.0)
    assert rows["dualgate"].cpu_ratio == pytest.approx(0.5)
    assert rows["wsgiref"].cpu_us == pytest.approx(100.0)
    assert rows["dualgate"].cpu_per == "req"
    meta = {
        "date": "d", "command": "c", "nproc": 2, "cpu": "x", "kernel": "k", "python": "3",
        "pinning": "p", "load_tool": "wrk", "rounds": 3, "duration": 1, "warmup": 1,
        "versions": {},
    }  # fmt: skip
    text = report.markdown(list(rows.values()), None, meta, [], ["wsgiref", "dualgate"], [])
    assert "| server | load | req/s | CPU µs/req | p50 ms |" in text
    assert "| dualgate | ka-c10 | 2,000 (2.00x) | 50.0 (0.50x) |" in text


def _argparse_help(http_choices: list[str] | None) -> str:
    parser = argparse.ArgumentParser(prog="dualgate serve")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], help="event loop")
    if http_choices is not None:
        parser.add_argument("--http", choices=http_choices, help="request parser")
    parser.add_argument("--http-timeout", type=float, help="not the parser: httptools h11")
    return parser.format_help()


_CLICK_HELP = """\
Options:
  --http [auto|h11|httptools|zttp]
                                  HTTP protocol implementation.  [default:
                                  auto]
  --http2                         Enable HTTP/2 support. Requires --http zttp.
  -w, --workers INTEGER           Number of worker processes.
"""


def test_option_help_reads_one_option_of_argparse_and_click() -> None:
    block = servers.option_help(_CLICK_HELP, "--http")
    assert block is not None and "zttp" in block and "--http2" not in block
    assert servers.option_help(_CLICK_HELP, "--workers") is not None
    assert servers.option_help(_argparse_help(None), "--http") is None  # --http-timeout only
    assert servers.option_help(None, "--http") is None


def _build(name: str, interface: str = "wsgi") -> list[str]:
    app = servers.AppRef("benchmarks.apps.hello:application", "wsgi")
    if interface == "asgi":
        app = servers.AppRef("benchmarks.apps.asgi_hello:app", "asgi")
    return servers.BY_NAME[name].build(app, 8000, servers.Options(None, Path("."), 1))


def test_dualgate_parser_variants_follow_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text: str | None = _argparse_help(None)
    monkeypatch.setattr(servers, "_dualgate_help", lambda: help_text)
    # Without --http: the variants are skipped with a reason, dualgate runs as before.
    assert "--http" not in _build("dualgate")
    why = servers.BY_NAME["dualgate-httptools"].probe
    assert why is not None and "no `--http`" in (why() or "")
    help_text = _argparse_help(["auto", "h11"])
    assert "no `--http httptools`" in (why() or "")
    help_text = _argparse_help(["auto", "h11", "httptools"])
    assert why() is None
    # h11 named explicitly, so an `auto` default cannot move what the dualgate row measures.
    assert _build("dualgate")[-4:] == ["--loop", "asyncio", "--http", "h11"]
    assert _build("dualgate-httptools")[-4:] == ["--loop", "asyncio", "--http", "httptools"]
    argv = _build("dualgate-httptools-uvloop", "asgi")
    assert argv[-4:] == ["--loop", "uvloop", "--http", "httptools"]
    help_text = None
    assert "CLI not available" in (why() or "")


def test_gunicorn_parser_is_named_only_where_gunicorn_has_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_parser = "  --http-parser STRING  HTTP parser implementation. [auto]\n"
    help_text: str | None = with_parser
    monkeypatch.setattr(servers, "_gunicorn_help", lambda: help_text)
    assert "--http-parser=python" in _build("gunicorn-gthread")
    assert "--http-parser=fast" in _build("gunicorn-h1c")
    probe = servers.BY_NAME["gunicorn-h1c"].probe
    assert probe is not None and probe() is None
    help_text = "  --http-protocols STRING  HTTP protocols. [h1]\n"
    assert not any(a.startswith("--http-parser") for a in _build("gunicorn-gthread"))
    assert "no `--http-parser`" in (probe() or "")


def test_uvicorn_zttp_is_skipped_when_uvicorn_has_no_such_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    help_text = _CLICK_HELP
    monkeypatch.setattr(servers, "_uvicorn_help", lambda: help_text)
    probe = servers.BY_NAME["uvicorn-zttp"].probe
    assert probe is not None and probe() is None
    help_text = _CLICK_HELP.replace("|zttp", "")
    assert "no `--http zttp`" in (probe() or "")
    argv = _build("uvicorn-httptools", "asgi")
    assert argv[argv.index("--http") + 1] == "httptools"
    assert argv[argv.index("--loop") + 1] == "uvloop"


def test_granian_runs_one_worker_one_runtime_thread_http1_without_access_log() -> None:
    for interface in ("wsgi", "asgi"):
        argv = _build("granian", interface)

        def value(flag: str, argv: list[str] = argv) -> str:
            return argv[argv.index(flag) + 1]

        assert value("--interface") == interface
        assert value("--workers") == value("--runtime-threads") == value("--http") == "1"
        assert "--no-access-log" in argv
        assert "--blocking-threads" not in argv  # granian's own default unless --threads


# -- memory per idle connection ---------------------------------------------------------------


def _idle_run(tmp_path: Path, *options: str) -> dict[str, Any]:
    out = tmp_path / "idle.md"
    argv = [sys.executable, "-m", "benchmarks.idle_memory", "--servers", "dualgate", "-n", "50"]
    argv += ["--batch", "10", "--hold", "0.5", "--timeout", "30", "--out", str(out), *options]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    data: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    assert out.read_text() in done.stdout  # the table on stdout is the one written
    return data


def test_idle_memory_holds_every_connection_open_and_reads_the_servers_rss(
    tmp_path: Path,
) -> None:
    data = _idle_run(tmp_path)
    assert data["notes"] == []
    found = {r["variant"]: r for r in data["results"]}
    assert set(found) == {"keep-alive", "silent"}
    for result in found.values():
        assert result["connections"] == 50
        # Every connection opened (and, for keep-alive, answered 200), held by the server as a
        # socket of its own, and still open at the reading and after the hold.
        assert result["opened"] == result["accepted"] == 50, result
        assert result["open_at_reading"] == result["open_after_hold"] == 50, result
        assert result["failures"] == {} and result["closed"] == {}
        assert result["all_open"] is True
        assert result["processes"] == 1
        assert result["rss_before_kib"] > 1024 and result["rss_after_kib"] > 1024
        # Sane for 50 connections: not a megabyte each (RSS moves in 4 KiB pages, and memory
        # freed after the warm-up is reused first, so a small run can show little).
        assert -64 < result["kib_per_connection"] < 1024, result
        assert "--limit-concurrency" in result["argv"]


def test_idle_memory_shows_connections_a_server_refused(tmp_path: Path) -> None:
    # dualgate answers 503 and closes beyond --limit-concurrency: those connections must show
    # as not opened, with why, rather than be counted.
    data = _idle_run(
        tmp_path, "--variants", "keep-alive", "--extra-arg=--limit-concurrency", "--extra-arg=20"
    )
    (result,) = data["results"]
    assert result["opened"] == 20 and result["failures"] == {"status 503": 30}, result
    assert result["all_open"] is False
    assert "| **no** |" in (tmp_path / "idle.md").read_text()


def test_still_open_tells_open_from_closed_and_unasked_bytes() -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for ours, _ in pairs:
            ours.setblocking(False)
        pairs[1][1].close()  # the server closed it
        pairs[2][1].sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")  # said something unasked
        count, closed = idle_memory.still_open([ours for ours, _ in pairs])
        assert count == 1
        assert closed == {"EOF": 1, "unexpected data": 1}
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_response_status_waits_for_the_whole_response() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert idle_memory.response_status(head + b"hel") is None
    assert idle_memory.response_status(head + b"hello") == 200
    chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"
    assert idle_memory.response_status(chunked) is None
    assert idle_memory.response_status(chunked + b"0\r\n\r\n") == 503
    # Framed by the end of the connection: never a complete keep-alive response.
    assert idle_memory.response_status(b"HTTP/1.1 200 OK\r\n\r\nbody") is None
