"""Driving load: wrk for request loads when installed, else the built-in client (and for streams).

Both run as pinned subprocesses with a hard deadline and come back as a `Measurement`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.measurement import Measurement
from benchmarks.procs import LOOPBACK, run_bounded

REQUEST_TIMEOUT = 2.0  # seconds; wrk's default, also used by the built-in client
SLACK = 10.0  # seconds a tool may overrun its nominal duration before it is killed


@dataclass(frozen=True)
class Load:
    name: str
    connections: int
    close: bool  # send "Connection: close": a new TCP connection per request

    @property
    def label(self) -> str:
        kind = "close" if self.close else "keep-alive"
        return f"{kind} c{self.connections}"


HTTP_LOADS = (
    Load("ka-c1", 1, False),
    Load("ka-c10", 10, False),
    Load("ka-c100", 100, False),
    Load("close-c10", 10, True),
)

# WebSocket echo loads: connections each doing one round trip at a time.
WS_LOADS = (
    Load("ws-c1", 1, False),
    Load("ws-c100", 100, False),
)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _latency_ms(text: str, percent: str) -> float | None:
    match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.MULTILINE)
    return float(match[1]) * _UNITS[match[2]] if match else None


def parse_wrk(text: str) -> Measurement:
    """Read requests/s, p50/p99 and every error count out of `wrk --latency` output."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text, re.MULTILINE)
    if rate is None or done is None:
        raise ValueError("no summary in wrk output")
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        for name, count in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            if int(count):
                errors[name] = int(count)
    status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if status and int(status[1]):
        errors["status"] = int(status[1])
    requests = int(done[1])
    if requests == 0 and not errors:
        # A server that stalls for the whole run leaves wrk nothing to time out within it; that
        # must not read as a clean run.
        errors["no-response"] = 1
    return Measurement(
        value=float(rate[1]),
        unit="req/s",
        seconds=float(done[2]) * _UNITS[done[3]] / 1000,
        requests=requests,
        errors=sum(errors.values()),
        error_detail=errors,
        p50_ms=_latency_ms(text, "50") if requests else None,
        p99_ms=_latency_ms(text, "99") if requests else None,
        tool="wrk",
    )


class LoadRunner:
    def __init__(
        self,
        tool: Literal["wrk", "builtin"],
        cpus: frozenset[int] | None,
        cwd: Path,
        env: dict[str, str],
    ) -> None:
        self.tool = tool
        self.cpus = cpus
        self.cwd = cwd
        self.env = env

    @staticmethod
    def wrk_path() -> str | None:
        return shutil.which("wrk")

    def http(
        self, port: int, path: str, load: Load, duration: float, tls: bool = False
    ) -> Measurement:
        if self.tool == "wrk":
            return self._wrk(port, path, load, duration, "https" if tls else "http")
        if tls:
            return Measurement.failed("req/s", "builtin", "the built-in client speaks no TLS")
        argv = [
            *self._client("http", port, path, REQUEST_TIMEOUT),
            f"--connections={load.connections}",
            f"--duration={duration}",
        ]
        if load.close:
            argv.append("--close")
        return self._run_client(argv, duration + SLACK, "req/s")

    def stream(
        self, mode: Literal["download", "upload"], port: int, path: str, size: int, timeout: float
    ) -> Measurement:
        argv = [*self._client(mode, port, path, timeout), f"--bytes={size}"]
        return self._run_client(argv, timeout + SLACK, "MiB/s")

    def ws_echo(self, port: int, path: str, load: Load, duration: float) -> Measurement:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.ws_client",
            "echo",
            f"--port={port}",
            f"--path={path}",
            f"--connections={load.connections}",
            f"--duration={duration}",
        ]
        return self._run_client(argv, duration + SLACK + 10, "msg/s")

    def ws_stream(
        self, mode: Literal["download", "upload"], port: int, path: str, size: int, timeout: float
    ) -> Measurement:
        argv = [sys.executable, "-m", "benchmarks.ws_client", mode, f"--port={port}"]
        argv += [f"--path={path}", f"--bytes={size}", f"--timeout={timeout}"]
        return self._run_client(argv, timeout + SLACK, "MiB/s")

    def _client(self, mode: str, port: int, path: str, timeout: float) -> list[str]:
        return [
            sys.executable,
            "-m",
            "benchmarks.client",
            mode,
            f"--port={port}",
            f"--path={path}",
            f"--timeout={timeout}",
        ]

    def _run_client(self, argv: list[str], deadline: float, unit: str) -> Measurement:
        done = run_bounded(argv, timeout=deadline, cpus=self.cpus, env=self.env, cwd=self.cwd)
        if done.returncode is None:
            return Measurement.failed(unit, "builtin", f"killed after {deadline:.0f} s")
        try:
            return Measurement.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            return Measurement.failed(unit, "builtin", done.stderr.strip()[-300:])

    def _wrk(self, port: int, path: str, load: Load, duration: float, scheme: str) -> Measurement:
        seconds = max(1, round(duration))
        argv = [
            "wrk",
            # One thread: the load generator has one core of its own, and wrk needs no more
            # than that to keep 100 connections busy.
            "--threads=1",
            f"--connections={load.connections}",
            f"--duration={seconds}s",
            f"--timeout={REQUEST_TIMEOUT:g}s",
            "--latency",
        ]
        if load.close:
            argv += ["--header", "Connection: close"]
        argv.append(f"{scheme}://{LOOPBACK}:{port}{path}")
        done = run_bounded(argv, timeout=seconds + SLACK, cpus=self.cpus, env=self.env)
        if done.returncode is None:
            return Measurement.failed("req/s", "wrk", f"killed after {seconds + SLACK:.0f} s")
        try:
            return parse_wrk(done.stdout)
        except ValueError:
            return Measurement.failed("req/s", "wrk", (done.stdout + done.stderr).strip()[-300:])
