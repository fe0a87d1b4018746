"""The soak's short forms: `python -m benchmarks.soak` for seconds, each part on, every verdict
passing: HTTP/1.1 alone, with HTTP/2, with the TLS server, with WebSockets, and every part
under `--workers 2`; the /metrics cross-check runs in each.

It starts its own dualgate servers, so this runs it as a subprocess, as one would by hand, and
reads the report it writes (soak.json). tests/test_soak_verdicts.py shows that each check can
fail, a mismatch against /metrics among them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak.traffic import kinds

ROOT = Path(__file__).resolve().parent.parent
EACH = {
    "no wrong answer",
    "every dropped stream closed",
    "descriptors and threads back to baseline",
    "no upward memory trend",
    "the server's /metrics agree with the clients' counts",
    "graceful SIGTERM finishes requests in flight",
    "no unexpected server errors",
}
WS = "every WebSocket session ended"
TLS = " (TLS server)"
# A TLS server's RSS climbs for its first minute (sessions, caches, the SSL buffers of
# connections in flight): seconds of load tell that warm-up from a trend too poorly to hold
# these runs to the long soak's step allowance; the rest of the verdicts hold as they are.
TLS_STEP = ("--max-rss-step", "256")
# A plain server's warm-up is smaller but, on a loaded machine, more connections are in flight
# at once; over seconds the step, not the slope, is what these runs can hold to.
PLAIN_STEP = ("--max-rss-step", "16")


def soak(tmp_path: Path, *flags: str, minutes: float = 0.15) -> dict[str, Any]:
    """A short soak; its report, once every verdict passed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "benchmarks.soak", "--minutes", str(minutes), "--no-plot"]
    done = subprocess.run(
        [*argv, "--keep-alive", "1", "--out", str(tmp_path), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert (tmp_path / "soak.json").exists(), done.stdout + done.stderr
    report: dict[str, Any] = json.loads((tmp_path / "soak.json").read_text())
    failed = [f"{v['name']}: {v['detail']}" for v in report["verdicts"] if not v["passed"]]
    assert not failed, failed
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    assert not (tmp_path / "soak.png").exists()
    return report


def verdicts(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {verdict["name"]: verdict for verdict in report["verdicts"]}


def checked(report: dict[str, Any], label: str = "") -> dict[str, int]:
    """The /metrics figures the cross-check read, by name."""
    verdict = verdicts(report)["the server's /metrics agree with the clients' counts" + label]
    return {
        line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1])
        for line in verdict["figures"]["checked"]
    }


def test_http11_alone_passes_every_check(tmp_path: Path) -> None:
    report = soak(tmp_path, "--no-h2", "--no-tls", "--no-ws", *PLAIN_STEP, minutes=0.25)
    assert set(verdicts(report)) == EACH
    assert set(report["figures"]["operations"]) == set(kinds(False, False, False))
    assert report["figures"]["answers_during_load"] > 300
    figures = checked(report)
    assert figures["HTTP/1.1 requests"] > 300 and figures["HTTP/2 requests"] == 0
    assert figures["refusals malformed"] > 0  # the garbage, each 400 seen by its client


def test_http2_streams_beside_http11(tmp_path: Path) -> None:
    report = soak(tmp_path, "--no-tls", "--no-ws", *PLAIN_STEP)
    assert set(verdicts(report)) == EACH
    assert {"h2", "h2-reset"} <= set(report["figures"]["operations"])
    figures = checked(report)
    assert figures["HTTP/2 requests"] > 0 and figures["HTTP/2 connections"] > 0
    assert figures["HTTP/2 streams reset by the client"] > 0
    assert figures["HTTP/1.1 requests"] > 0
    sigterm = verdicts(report)["graceful SIGTERM finishes requests in flight"]
    assert sigterm["figures"]["in_flight"]["h2-slow-streams"] == "ok"


def test_tls_server_with_http11_and_h2_by_alpn(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    report = soak(tmp_path, "--no-ws", *TLS_STEP)
    assert set(verdicts(report)) == EACH | {name + TLS for name in EACH - {"no wrong answer"}}
    operations = set(report["figures"]["operations"])
    assert {"tls:hello", "tls:upload", "tls:h2", "tls:h2-reset"} <= operations
    figures = checked(report, TLS)
    assert figures["HTTP/1.1 requests"] > 0 and figures["HTTP/2 requests"] > 0
    assert figures["HTTP/2 connections"] > 0


def test_websocket_sessions_opened_used_closed_and_dropped(tmp_path: Path) -> None:
    report = soak(tmp_path, "--no-tls", "--no-h2", *PLAIN_STEP)
    assert set(verdicts(report)) == EACH | {WS}
    assert {"ws-echo", "ws-drop"} <= set(report["figures"]["operations"])
    figures = checked(report)
    assert figures["WebSocket sessions"] == figures["WebSocket sessions the app saw"] > 0
    sigterm = verdicts(report)["graceful SIGTERM finishes requests in flight"]
    assert sigterm["figures"]["in_flight"]["ws-open"] == "ok"


def test_every_part_under_two_worker_processes(tmp_path: Path) -> None:
    pytest.importorskip("trustme")
    report = soak(tmp_path, "--workers", "2", *TLS_STEP)
    names = EACH | {WS}
    assert set(verdicts(report)) == names | {name + TLS for name in names - {"no wrong answer"}}
    for label in ("", TLS):
        figures = checked(report, label)
        assert figures["workers ready"] == 2 and figures["worker restarts"] == 0
        assert figures["HTTP/2 requests"] > 0 and figures["WebSocket sessions"] > 0
    # The supervisor and both workers were sampled, each process on its own.
    baseline = report["figures"]["plain"]["baseline"]
    assert len(baseline["per_process"]) == 3
