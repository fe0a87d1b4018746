"""Memory per idle connection: `python -m benchmarks.idle_memory`.

Each server under test (the harness's own definitions in `servers.py`) is started fresh for
each variant, serving the `hello` app (or `asgi-hello`), pinned to one core as in
`python -m benchmarks`, with a descriptor limit high enough for the connections. Then:

1. warm-up: `--batch` connections at once each send one request, read the answer and close,
   twice, so the threads a server starts for a burst of that size exist before the baseline;
2. the baseline: VmRSS summed over the server's process tree, and the socket descriptors it
   holds (`procs.rss_kib`, `procs.open_sockets`);
3. `-n` connections are opened, `--batch` at a time; in the `keep-alive` variant each sends one
   complete request and reads the whole answer (so every connection is past accept and idle in
   keep-alive), in the `silent` variant they send nothing;
4. once the server holds a socket for every connection (or `--timeout` runs out), and its RSS has
   settled, RSS is read again; the figure is (after - before) / connections still open;
5. every connection is checked right then and again after `--hold` seconds: a server that closed
   some (a keep-alive or header timeout, a connection limit) shows as fewer open, never silently
   counted.

Servers keep their own code paths, but each is told to let `-n` connections in and leave them
open longer than the run (`IDLE_FLAGS`: connection limits raised, idle and header timeouts
lengthened, waitress polled with poll() rather than select(), which stops at descriptor 1024).
Every step is bounded; connections are closed at the end, and each server is stopped by its
process group (its PID).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import selectors
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from benchmarks import procs
from benchmarks.run import cpu_model
from benchmarks.scenarios import BY_NAME as SCENARIOS
from benchmarks.servers import BY_NAME as SERVERS
from benchmarks.servers import Options, Server

ROOT = Path(__file__).resolve().parent.parent
READY_DEADLINE = 30.0
DEFAULT_SERVERS = (
    "dualgate",
    "dualgate-uvloop",
    "dualgate-httptools",
    "dualgate-httptools-uvloop",
    "waitress",
    "uvicorn",
    "uvicorn-httptools",
    "gunicorn-gthread",
    "granian",
)
VERSIONS = ("dualgate", "h11", "httptools", "uvloop", "waitress", "uvicorn", "gunicorn", "granian")
Variant = Literal["keep-alive", "silent"]
VARIANTS: tuple[Variant, ...] = ("keep-alive", "silent")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
LONG = 3600  # seconds: longer than any run, for every idle and header timeout


def _dualgate_flags(room: int) -> list[str]:
    return [
        *("--limit-concurrency", str(room)),
        *("--timeout-keep-alive", str(LONG)),
        *("--timeout-request-head", str(LONG)),
    ]


def _waitress_flags(room: int) -> list[str]:
    # select() cannot watch a descriptor above 1023; poll() can.
    return [f"--connection-limit={room}", f"--channel-timeout={LONG}", "--asyncore-use-poll"]


def _uvicorn_flags(room: int) -> list[str]:
    return ["--timeout-keep-alive", str(LONG)]  # no connection limit by default


def _gunicorn_flags(room: int) -> list[str]:
    return [f"--worker-connections={room}", f"--keep-alive={LONG}"]


def _granian_flags(room: int) -> list[str]:
    # Backpressure (default backlog / workers, 1024) bounds the connections served at once; the
    # header read timeout (30 s by default) goes to its most, 60 s, which a run stays within.
    return ["--backpressure", str(room), "--http1-header-read-timeout", "60000"]


# What each server is told so that `room` connections get in and stay open for the run; placed
# before the app, after the harness's own flags.
IDLE_FLAGS: dict[str, Callable[[int], list[str]]] = {
    "dualgate": _dualgate_flags,
    "dualgate-uvloop": _dualgate_flags,
    "dualgate-httptools": _dualgate_flags,
    "dualgate-httptools-uvloop": _dualgate_flags,
    "waitress": _waitress_flags,
    "uvicorn": _uvicorn_flags,
    "uvicorn-httptools": _uvicorn_flags,
    "gunicorn-gthread": _gunicorn_flags,
    "granian": _granian_flags,
}


@dataclass
class Result:
    server: str
    variant: Variant
    round: int
    connections: int  # asked for
    opened: int  # connected (and, for keep-alive, answered 200)
    failures: dict[str, int]  # why the others did not open or were not answered
    accepted: int  # sockets the server holds beyond its baseline when RSS was read
    open_at_reading: int  # client connections still open right after the reading
    open_after_hold: int  # ... and after --hold seconds more
    closed: dict[str, int]  # how the others ended (EOF, reset, unexpected data)
    rss_before_kib: int
    rss_after_kib: int
    processes: int
    threads_before: int
    threads_after: int
    open_seconds: float  # time to open (and have answered) every connection
    argv: list[str] = field(default_factory=list)

    @property
    def kib_per_connection(self) -> float | None:
        if not self.open_at_reading:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.open_at_reading

    @property
    def all_open(self) -> bool:
        return self.connections == self.opened == self.open_at_reading == self.open_after_hold


# -- the client: plain non-blocking sockets, one selector, every wait bounded --------------------


def response_status(data: bytes) -> int | None:
    """The status of one complete HTTP/1.1 response in `data`, or None while it is incomplete
    (or framed by the end of the connection, which a keep-alive response never is)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip().lower()
    body = data[end + 4 :]
    if "content-length" in fields:
        return status if len(body) >= int(fields["content-length"]) else None
    if "chunked" in fields.get("transfer-encoding", ""):
        return status if body.endswith(b"0\r\n\r\n") else None
    return None


def _why(error: int) -> str:
    return errno.errorcode.get(error, str(error))


def _connect(port: int, count: int, deadline: float, failures: Counter[str]) -> list[socket.socket]:
    """`count` connections at once; those connected within the deadline."""
    selector = selectors.DefaultSelector()
    done: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            error = sock.connect_ex((procs.LOOPBACK, port))
            if error not in (0, errno.EINPROGRESS):
                failures[f"connect {_why(error)}"] += 1
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_WRITE)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                selector.unregister(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    failures[f"connect {_why(error)}"] += 1
                    sock.close()
                else:
                    done.append(sock)
        for key in list(selector.get_map().values()):
            failures["connect timeout"] += 1
            key.fileobj.close()  # type: ignore[union-attr]
    finally:
        selector.close()
    return done


def _request(
    socks: list[socket.socket], deadline: float, failures: Counter[str]
) -> list[socket.socket]:
    """One request on each connection and its whole response read; those answered 200 and
    still open (the others are closed and counted in `failures`)."""
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    answered: list[socket.socket] = []

    def fail(sock: socket.socket, why: str) -> None:
        failures[why] += 1
        with contextlib.suppress(KeyError):
            selector.unregister(sock)
        sock.close()

    try:
        for sock in socks:
            try:
                sent = sock.send(REQUEST)
            except OSError as exc:
                fail(sock, f"send {_why(exc.errno or 0)}")
                continue
            if sent != len(REQUEST):  # a fresh socket's buffer takes 40 bytes
                fail(sock, "send short")
                continue
            received[sock] = b""
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(sock, f"recv {_why(exc.errno or 0)}")
                    continue
                if not chunk:
                    fail(sock, "closed before a keep-alive response")
                    continue
                received[sock] += chunk
                try:
                    status = response_status(received[sock])
                except (ValueError, IndexError):
                    fail(sock, "malformed response")
                    continue
                if status is None:
                    continue
                selector.unregister(sock)
                if status == 200:
                    answered.append(sock)
                else:
                    fail(sock, f"status {status}")
        for key in list(selector.get_map().values()):
            fail(key.fileobj, "response timeout")  # type: ignore[arg-type]
    finally:
        selector.close()
    return answered


def open_idle(
    port: int, count: int, batch: int, send: bool, timeout: float, failures: Counter[str]
) -> list[socket.socket]:
    """`count` connections, `batch` at a time, each answered once when `send`; within `timeout`
    seconds in all."""
    deadline = time.monotonic() + timeout
    held: list[socket.socket] = []
    while len(held) + sum(failures.values()) < count and time.monotonic() < deadline:
        size = min(batch, count - len(held) - sum(failures.values()))
        socks = _connect(port, size, deadline, failures)
        held += _request(socks, deadline, failures) if send else socks
    missing = count - len(held) - sum(failures.values())
    if missing > 0:
        failures["not tried: --timeout ran out"] += missing
    return held


def still_open(socks: Sequence[socket.socket]) -> tuple[int, Counter[str]]:
    """How many connections are open with nothing to read, and how the others ended: a peek
    that would block means open; EOF or an error means the server closed it; bytes mean it
    said something unasked (a timeout answer, say)."""
    closed: Counter[str] = Counter()
    count = 0
    for sock in socks:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            count += 1
            continue
        except OSError as exc:
            closed[_why(exc.errno or 0)] += 1
            continue
        closed["EOF" if not data else "unexpected data"] += 1
    return count, closed


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# -- one server, one variant ----------------------------------------------------------------------


def _wait_sockets(session: int, wanted: int, timeout: float) -> int:
    """Poll the server's socket count until it reaches `wanted` or stops moving for 2 s (both
    within `timeout`); return the last count."""
    deadline = time.monotonic() + timeout
    last, since = procs.open_sockets(session), time.monotonic()
    while last != wanted and time.monotonic() < deadline and time.monotonic() - since < 2.0:
        time.sleep(0.1)
        now = procs.open_sockets(session)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _settled_rss(session: int, seconds: float) -> tuple[int, int]:
    """VmRSS of the tree once two readings 0.25 s apart agree within 0.5% (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    reading = procs.rss_kib(session) or (0, 0)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = procs.rss_kib(session) or (0, 0)
        steady = abs(now[0] - reading[0]) <= reading[0] * 0.005
        reading = now
        if steady:
            break
    return reading


def _warm_up(port: int, batch: int, timeout: float) -> None:
    for _ in range(2):
        failures: Counter[str] = Counter()
        close_all(open_idle(port, batch, batch, True, timeout, failures))


def measure(
    server: Server, variant: Variant, rnd: int, args: argparse.Namespace, workdir: Path
) -> Result | str:
    """One fresh server, one variant: the Result, or why there is none."""
    scenario = SCENARIOS[args.scenario]
    app = server.app_for(scenario)
    if app is None:
        return f"{server.name} does not serve {scenario.name}"
    port = procs.free_port()
    room = args.connections + 2 * args.batch + 100
    options = Options(None, workdir, 0)
    argv = server.argv(app, port, options, False)
    idle_flags = IDLE_FLAGS.get(server.name)
    flags = (idle_flags(room) if idle_flags else []) + list(args.extra_arg)
    argv = [*argv[:-1], *flags, argv[-1]] if argv[-1] == app.target else [*argv, *flags]
    log_path = workdir / f"{server.name}-{variant}-{rnd}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cores = procs.Cores.plan()
    with log_path.open("wb") as log:
        proc = procs.spawn(
            argv, cpus=cores.server, env=env, cwd=ROOT, stdout=log, stderr=log, nofile=room + 1024
        )
    held: list[socket.socket] = []
    try:
        why = procs.wait_ready(proc, port, READY_DEADLINE)
        if why is not None:
            return f"{server.name} {why}: {procs.tail(log_path, 4)!r}; command `{shlex.join(argv)}`"
        _warm_up(port, args.batch, args.timeout)
        base_sockets = _wait_sockets(proc.pid, -1, 5.0)  # settles: warm-up sockets closed
        threads_before = procs.threads(proc.pid)
        before, _ = _settled_rss(proc.pid, 3.0)
        failures: Counter[str] = Counter()
        started = time.monotonic()
        held = open_idle(
            port, args.connections, args.batch, variant == "keep-alive", args.timeout, failures
        )
        open_seconds = time.monotonic() - started
        sockets = _wait_sockets(proc.pid, base_sockets + len(held), args.timeout)
        after, processes = _settled_rss(proc.pid, 5.0)
        threads_after = procs.threads(proc.pid)
        open_now, _ = still_open(held)
        time.sleep(args.hold)
        open_later, closed = still_open(held)
        if proc.poll() is not None:
            return f"{server.name} exited (status {proc.returncode}): {procs.tail(log_path, 4)!r}"
        return Result(
            server.name,
            variant,
            rnd,
            args.connections,
            len(held),
            dict(failures),
            sockets - base_sockets,
            open_now,
            open_later,
            dict(closed),
            before,
            after,
            processes,
            threads_before,
            threads_after,
            open_seconds,
            argv,
        )
    finally:
        close_all(held)
        procs.stop(proc)


# -- the report -----------------------------------------------------------------------------------


def _counts(found: dict[str, int]) -> str:
    return ", ".join(f"{why} {n:,}" for why, n in sorted(found.items()))


def markdown(results: Sequence[Result], meta: dict[str, object], notes: Sequence[str]) -> str:
    out = [
        "# dualgate idle-connection memory",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), Linux {meta['kernel']}, "
        f"Python {meta['python']}",
        f"- app: `{meta['scenario']}`; {meta['connections']:,} connections opened "
        f"{meta['batch']} at a time; open checked again after {meta['hold']} s; "
        f"{meta['rounds']} round(s), the median shown",
        f"- versions: {', '.join(f'{k} {v}' for k, v in sorted(meta['versions'].items()))}",  # type: ignore[attr-defined]
        "",
        "KiB per connection is (VmRSS after - VmRSS before) / connections open at the reading, "
        "VmRSS summed over the server's process tree, each reading taken once it had settled. "
        "`keep-alive`: each connection sent one request and read its whole response, and sits "
        "idle in keep-alive; `silent`: connected, nothing sent. *open* counts the client's "
        "connections the server had not closed at the reading and after the hold; *accepted* "
        "the socket descriptors the server held beyond its baseline (a connection the server "
        "has not accepted yet is in the kernel's backlog, not in its memory). Each server "
        "was told to let every connection in and keep it open (`IDLE_FLAGS` in "
        "`benchmarks/idle_memory.py`).",
        "",
        "| server | variant | KiB/conn | open (reading / after hold) | accepted | RSS before MiB "
        "| RSS after MiB | threads before / after | seconds to open | all open |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---|",
    ]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.server, r.variant), []).append(r)
    for (server, variant), mine in groups.items():
        per = [r.kib_per_connection for r in mine if r.kib_per_connection is not None]
        r = mine[len(mine) // 2]  # a round to show the counts of (the middle one)
        kib = f"{statistics.median(per):.1f}" if per else "-"
        verdict = "yes" if all(x.all_open for x in mine) else "**no**"
        out.append(
            f"| {server} | {variant} | {kib} | {r.open_at_reading:,} / {r.open_after_hold:,} "
            f"of {r.connections:,} | {r.accepted:,} | {r.rss_before_kib / 1024:.1f} "
            f"| {r.rss_after_kib / 1024:.1f} | {r.threads_before} / {r.threads_after} "
            f"| {r.open_seconds:.1f} | {verdict} |"
        )
    lost = [r for r in results if not r.all_open]
    if lost or notes:
        out += ["", "## Notes", ""]
    for r in lost:
        detail = "; ".join(
            part
            for part in (
                f"not opened: {_counts(r.failures)}" if r.failures else "",
                f"closed by the server: {_counts(r.closed)}" if r.closed else "",
            )
            if part
        )
        out.append(
            f"- {r.server} {r.variant} round {r.round + 1}: {r.opened:,} of {r.connections:,} "
            f"opened, {r.open_at_reading:,} open at the reading, {r.open_after_hold:,} after "
            f"the hold ({detail or 'no detail'})"
        )
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _versions() -> dict[str, str]:
    import importlib.metadata

    found = {}
    for name in VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.idle_memory",
        description="RSS per idle keep-alive (and silent) connection, per server.",
    )
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS), help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="keep-alive,silent")
    parser.add_argument("-n", "--connections", type=int, default=5000, help="idle connections")
    parser.add_argument("--batch", type=int, default=100, help="connections opened at once")
    parser.add_argument(
        "--scenario", choices=["hello", "asgi-hello"], default="hello", help="the app served"
    )
    parser.add_argument("--rounds", type=int, default=1, help="fresh server per round")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds before the last check")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each step, s")
    parser.add_argument(
        "--extra-arg",
        action="append",
        default=[],
        help="one more argument for every server's command (repeat it)",
    )
    parser.add_argument("--out", type=Path, help="write the markdown here, JSON beside it")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [s for s in args.servers if s not in SERVERS]:
        parser.error(f"unknown servers: {', '.join(bad)}")
    if bad := [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"unknown variants: {', '.join(bad)}")
    if args.connections < 1 or args.batch < 1 or args.rounds < 1 or args.timeout <= 0:
        parser.error("-n, --batch, --rounds and --timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    limit = procs.raise_nofile(args.connections + 2 * args.batch + 256)
    if limit < args.connections + args.batch + 64:
        print(
            f"the descriptor limit ({limit}) is too low for -n {args.connections}", file=sys.stderr
        )
        return 2
    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix="dualgate-idle-"))
    try:
        for rnd in range(args.rounds):
            for name in args.servers:
                server = SERVERS[name]
                if why := server.unavailable():
                    if rnd == 0:
                        notes.append(f"{name} skipped: {why}")
                    continue
                for variant in args.variants:
                    print(f"[round {rnd + 1}] {name} {variant}", file=sys.stderr, flush=True)
                    found = measure(server, variant, rnd, args, workdir)
                    if isinstance(found, str):
                        notes.append(found)
                        print(f"    {found}", file=sys.stderr, flush=True)
                        continue
                    results.append(found)
                    kib = found.kib_per_connection
                    print(
                        f"    {kib if kib is None else round(kib, 2)} KiB/conn, "
                        f"{found.open_at_reading}/{found.open_after_hold} of "
                        f"{found.connections} open, {found.accepted} accepted",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    meta: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "-m", "benchmarks.idle_memory", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "scenario": args.scenario,
        "connections": args.connections,
        "batch": args.batch,
        "hold": args.hold,
        "rounds": args.rounds,
        "versions": _versions(),
    }
    text = markdown(results, meta, notes)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        data = {
            "meta": meta,
            "notes": notes,
            "results": [
                {**asdict(r), "kib_per_connection": r.kib_per_connection, "all_open": r.all_open}
                for r in results
            ],
        }
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
