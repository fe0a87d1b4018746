"""What a supervisor and its workers say to each other: messages up the pipe, signals down.

Up, one pipe per worker, one byte per message: READY once the application is loaded and ASGI
lifespan start-up is done, BEAT from the worker's event loop every heartbeat interval (a
blocked loop goes quiet, which a side thread would hide), RETIRING when --limit-max-requests is
reached, HOPELESS just before it exits when it cannot start for a reason no retry mends (the
application cannot be imported, a setting is wrong). With --metrics-address each BEAT is
followed by a SNAPSHOT of the worker's figures (the byte, a 4-byte big-endian length, the Stats
as JSON), and a last one goes out once the server has stopped. A byte of no known kind is
skipped.

Down, signals: SIGTERM stops a worker gracefully and a second one forces; SIGINT is ignored by
workers (Ctrl-C reaches the whole process group, and the supervisor decides what it means);
DUMP_SIGNAL asks for every thread's traceback before a worker is killed for not answering.
"""

from __future__ import annotations

import enum
import json
import signal
from dataclasses import dataclass

from dualgate.hooks import STOP_SIGNALS
from dualgate.metrics.snapshot import Stats

__all__ = [
    "BEAT",
    "DUMP_SIGNAL",
    "HOPELESS",
    "READY",
    "RETIRING",
    "SNAPSHOT",
    "SUPERVISOR_SIGNALS",
    "Kind",
    "Message",
    "decode",
    "heartbeat_interval",
    "read_snapshot",
    "snapshot_message",
]


class Kind(enum.Enum):
    READY = b"R"
    BEAT = b"."
    RETIRING = b"M"
    SNAPSHOT = b"S"
    HOPELESS = b"X"


READY = Kind.READY.value
BEAT = Kind.BEAT.value
RETIRING = Kind.RETIRING.value
SNAPSHOT = Kind.SNAPSHOT.value
HOPELESS = Kind.HOPELESS.value
_KINDS = {kind.value: kind for kind in Kind}
_LENGTH = 4  # bytes of a snapshot's length, big-endian

DUMP_SIGNAL = signal.SIGUSR1
# What the supervisor handles (policy.py decides what each means): the stop signals, as a
# server's (hooks.py), SIGHUP (a new generation of workers), SIGTTIN and SIGTTOU (one worker
# more, one fewer) and SIGCHLD (a worker ended). Blocked around fork and spawn together with
# DUMP_SIGNAL, so a child never runs the supervisor's handlers (nor dies of DUMP_SIGNAL before
# it can dump tracebacks), and reset in the child before it unblocks them.
SUPERVISOR_SIGNALS = frozenset(
    {*STOP_SIGNALS, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD}
)
BLOCKED_AROUND_START = SUPERVISOR_SIGNALS | {DUMP_SIGNAL}


@dataclass(frozen=True)
class Message:
    kind: Kind
    stats: Stats | None = None  # a SNAPSHOT's figures


def heartbeat_interval(healthcheck: float) -> float:
    """How often a worker beats: often enough that four beats fit in the health-check time."""
    return min(1.0, healthcheck / 4)


def snapshot_message(stats: Stats) -> bytes:
    payload = json.dumps(stats.to_json(), separators=(",", ":")).encode("utf-8")
    return SNAPSHOT + len(payload).to_bytes(_LENGTH, "big") + payload


def read_snapshot(buffer: bytes) -> tuple[Stats | None, int]:
    """The snapshot message at the start of `buffer` and its size, or (None, 0) while it is
    incomplete. A payload that does not decode raises ValueError."""
    if len(buffer) < 1 + _LENGTH:
        return None, 0
    size = int.from_bytes(buffer[1 : 1 + _LENGTH], "big")
    end = 1 + _LENGTH + size
    if len(buffer) < end:
        return None, 0
    try:
        stats = Stats.from_json(json.loads(buffer[1 + _LENGTH : end]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"a snapshot that does not decode: {exc!r}") from exc
    return stats, end


def decode(data: bytes) -> tuple[list[Message], bytes, str | None]:
    """The whole messages at the start of `data`, the bytes of one read only in part, and what
    was wrong when a snapshot did not decode: then nothing after it can be framed, and it is
    dropped with the rest."""
    messages: list[Message] = []
    index = 0
    while index < len(data):
        kind = _KINDS.get(data[index : index + 1])
        if kind is Kind.SNAPSHOT:
            try:
                stats, size = read_snapshot(data[index:])
            except ValueError as exc:
                return messages, b"", str(exc)
            if stats is None:
                break  # the rest of it comes with the next read
            messages.append(Message(kind, stats))
            index += size
            continue
        index += 1
        if kind is not None:
            messages.append(Message(kind))
    return messages, data[index:], None
