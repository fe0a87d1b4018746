"""One server under soak: started, found (its port, its metrics port), asked for its figures.

The soak runs the plain server (HTTP/1.1, h2c by prior knowledge, WebSockets) and, unless
--no-tls, a second one under TLS (HTTP/1.1 and h2 by ALPN, WebSockets over TLS) with a
certificate made for the run by trustme. Each runs with --metrics-address on a port of its
own; under --workers N the supervisor answers /metrics with every worker's figures added up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procs import spawn, stop
from benchmarks.soak.ledger import Ledger, Scrape, parse_metrics
from benchmarks.soak.sampler import Sampler, descendants
from benchmarks.soak.wire import LOOPBACK, Conn, Endpoint

__all__ = ["ROOT", "SetupError", "Target", "certificates", "start"]

ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 30.0
GRACEFUL = 15.0  # --timeout-graceful-shutdown for the soak's servers
PORT_LINE = re.compile(r"Serving .* on https?://127\.0\.0\.1:(\d+)")
METRICS_LINE = re.compile(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics", re.IGNORECASE)
# Metrics families the cross-check reads: they stand still once the load has (the loop lag,
# the gauges and the durations' sums do not).
STILL = (
    "dualgate_requests_total",
    "dualgate_http_requests_total",
    "dualgate_http2_",
    "dualgate_refusals_total",
    "dualgate_worker_restarts_total",
    "dualgate_workers",
)


class SetupError(Exception):
    """A server could not be started, or did not answer the soak's own questions."""


@dataclass
class Target:
    name: str  # "plain" or "tls"
    proc: subprocess.Popen[bytes]
    endpoint: Endpoint
    metrics_port: int
    log: Path
    workers: int  # 0: one process
    ledger: Ledger = field(default_factory=Ledger)
    sampler: Sampler | None = None

    @property
    def label(self) -> str:
        """What a verdict of this server's is suffixed with ("" for the plain one)."""
        return "" if self.name == "plain" else " (TLS server)"

    def worker_pids(self) -> list[int]:
        """The processes that serve: the server itself, or the supervisor's children."""
        if not self.workers:
            return [self.proc.pid]
        return descendants(self.proc.pid)


def certificates(directory: Path) -> tuple[Path, ssl.SSLContext, ssl.SSLContext]:
    """A CA and a certificate for 127.0.0.1 and localhost, made now: the server's PEM (key and
    chain) and the client's contexts (HTTP/1.1 by ALPN; h2 by ALPN)."""
    try:
        import trustme
    except ImportError:
        raise SetupError(
            "the TLS server needs trustme to make its certificate: pip install trustme "
            "(it is in the test and bench extras), or pass --no-tls"
        ) from None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "soak-server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    contexts = []
    for alpn in ("http/1.1", "h2"):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(context)
        context.set_alpn_protocols([alpn])
        contexts.append(context)
    return pem, contexts[0], contexts[1]


def start(
    name: str,
    log: Path,
    flags: list[str],
    workers: int,
    contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
) -> Target:
    """Start one soak server (flags: the soak's, then the user's); back once it serves."""
    argv = [
        sys.executable, "-m", "dualgate", "serve",
        "--mount", "/asgi=benchmarks.apps.soak:asgi_app",
        "--mount", "/=benchmarks.apps.soak:application",
        "--app-dir", str(ROOT), "--host", LOOPBACK, "--port", "0", "--no-access-log",
        "--metrics-address", f"{LOOPBACK}:0",
        "--timeout-graceful-shutdown", f"{GRACEFUL:g}",
        *(["--workers", str(workers)] if workers else []),
        *flags,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("wb") as sink:
        proc = spawn(argv, cpus=None, env=env, cwd=ROOT, stdout=sink)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        ports = PORT_LINE.findall(text)
        metrics = METRICS_LINE.search(text)
        ready = not workers or f"{workers} worker(s) ready" in text
        if ports and metrics and ready:
            h1, h2 = contexts if contexts is not None else (None, None)
            endpoint = Endpoint(name, int(ports[0]), h1, h2)
            return Target(name, proc, endpoint, int(metrics.group(1)), log, workers)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise SetupError(
        f"the {name} server did not start; its log:\n{log.read_text(errors='replace')[-2000:]}"
    )


async def get(endpoint: Endpoint, path: str, port: int | None = None) -> tuple[int, bytes]:
    """One GET on a new connection (`port`: the plain metrics listener instead)."""
    where = endpoint if port is None else Endpoint("metrics", port)
    conn = await Conn.open(where)
    try:
        await conn.send(
            b"GET %s HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" % path.encode()
        )
        head, body = await conn.response()
    finally:
        conn.close()
    return head.status, body


async def counters(target: Target, tries: int = 400) -> dict[str, int]:
    """The app's counters, added up over every serving process: each answers /counters with
    its own, so the soak asks (new connection each time) until it has every process's twice
    alike in a row (closes may still be landing). Each request is in the ledger."""
    pids = set(target.worker_pids())
    last: dict[int, dict[str, int]] = {}
    agreed: set[int] = set()
    for _ in range(tries):
        ticket = target.ledger.request("1.1", "/counters")
        status, body = await get(target.endpoint, "/counters")
        ticket.answered(status)
        if status != 200:
            raise SetupError(f"/counters answered {status}")
        now: dict[str, int] = json.loads(body)
        pid = now.pop("pid")
        # (wsgi_requests counts this very request: it moves with every reading.)
        if _still(last.get(pid)) == _still(now):
            agreed.add(pid)
        else:
            agreed.discard(pid)
        last[pid] = now
        if pids <= agreed:
            break
        await asyncio.sleep(0.1)
    else:
        missing = sorted(pids - agreed)
        raise SetupError(f"/counters: no two equal answers in a row from process(es) {missing}")
    total: dict[str, int] = {}
    for pid in pids:
        for key, value in last[pid].items():
            total[key] = total.get(key, 0) + value
    return total


def _still(counts: dict[str, int] | None) -> dict[str, int] | None:
    return None if counts is None else {k: v for k, v in counts.items() if k != "wsgi_requests"}


async def scrape(target: Target, tries: int = 20) -> tuple[Scrape, str]:
    """/metrics, once two readings `interval` apart agree on every family the cross-check
    reads (under --workers the supervisor adds up what each worker sent after its last
    heartbeat, a second apart)."""
    interval = 1.5 if target.workers else 0.3
    last: Scrape | None = None
    text = ""
    for _ in range(tries):
        status, body = await get(target.endpoint, "/metrics", target.metrics_port)
        if status != 200:
            raise SetupError(f"/metrics answered {status}")
        text = body.decode()
        now = {key: value for key, value in parse_metrics(text).items() if key[0].startswith(STILL)}
        if now == last:
            return now, text
        last = now
        await asyncio.sleep(interval)
    raise SetupError(f"/metrics did not stand still in {tries} readings")
