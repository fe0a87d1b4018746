"""The small parts of dualgate/h2/: preface sniffing, ALPN, the settings and flags, the phase
tables, the frame guard's reading and its budgets."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from dualgate.cli import build_parser
from dualgate.config import Config, ConfigError
from dualgate.h2 import preface
from dualgate.h2.guard import ENHANCE_YOUR_CALM, FRAME_SIZE_ERROR, Budget, FrameGuard, Violation
from dualgate.h2.phases import MOVES, STREAM_MOVES, Phase, StreamPhase
from dualgate.h2.preface import PREFACE, Sniffed, alpn_protocols, http2_enabled, negotiated, sniff
from dualgate.h2.settings import H2Settings
from tests.h2.support import raw_frame

# -- the preface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", range(1, len(PREFACE)))
def test_every_proper_prefix_of_the_preface_waits_for_more(size: int) -> None:
    assert sniff(PREFACE[:size]) is Sniffed.UNDECIDED


def test_sniffing() -> None:
    assert sniff(b"") is Sniffed.UNDECIDED
    assert sniff(PREFACE) is Sniffed.HTTP2
    assert sniff(PREFACE + b"\x00\x00\x00\x04") is Sniffed.HTTP2
    assert sniff(memoryview(PREFACE + b"more")) is Sniffed.HTTP2
    for http1 in (b"GET / HTTP/1.1\r\n", b"P", b"PRI * HTTP/1.1\r\n", b"POST /", b"\x16\x03\x01"):
        assert sniff(http1) is (Sniffed.UNDECIDED if PREFACE.startswith(http1) else Sniffed.HTTP1)
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r!") is Sniffed.HTTP1
    assert sniff(b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n") is Sniffed.HTTP1


def test_alpn_offers_h2_first_when_it_is_on() -> None:
    assert alpn_protocols(True) == ["h2", "http/1.1"]
    assert alpn_protocols(False) == ["http/1.1"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_alpn_protocols(alpn_protocols(True))  # a list OpenSSL takes


class FakeSSL:
    def __init__(self, chosen: str | None) -> None:
        self.chosen = chosen

    def selected_alpn_protocol(self) -> str | None:
        return self.chosen


def test_negotiated() -> None:
    assert negotiated(FakeSSL("h2"))
    assert not negotiated(FakeSSL("http/1.1"))
    assert not negotiated(FakeSSL(None))
    assert not negotiated(None)


def test_http2_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert http2_enabled(Config(app="x:y", http2="on"))
    assert not http2_enabled(Config(app="x:y", http2="off"))
    assert http2_enabled(Config(app="x:y"))  # auto, and h2 is installed here
    monkeypatch.setattr(preface, "http2_available", lambda: False)
    assert not http2_enabled(Config(app="x:y"))


def test_http2_on_without_h2_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"--http2 on needs the h2 package"):
        Config(app="x:y", http2="on")
    Config(app="x:y", http2="auto")  # auto just goes without


# -- settings and flags -----------------------------------------------------------------------


def test_settings_from_config() -> None:
    settings = H2Settings.from_config(Config(app="x:y"))
    assert settings == H2Settings()  # the defaults agree with Config's
    settings = H2Settings.from_config(
        Config(
            app="x:y",
            max_head_size=10_000,
            h2_max_concurrent_streams=7,
            h2_initial_window_size=1_000_000,
            h2_max_resets_per_second=9,
            h2_max_control_frames_per_second=11,
        )
    )
    assert settings.max_header_list_size == 10_000 and settings.header_block_limit == 20_000
    assert settings.connection_window == 1_000_000  # the larger of the window and the buffer
    assert (settings.reset_burst, settings.resets_per_second) == (14, 9.0)
    assert (settings.control_burst, settings.control_frames_per_second) == (22, 11.0)
    own = H2Settings.from_config(Config(app="x:y", h2_max_header_list_size=500))
    assert own.max_header_list_size == 500


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"h2_initial_window_size": 65534}, "--h2-initial-window-size must be between"),
        ({"h2_initial_window_size": 2**31}, "--h2-initial-window-size must be between"),
        ({"h2_max_frame_size": 16383}, "--h2-max-frame-size must be between"),
        ({"h2_max_frame_size": 2**24}, "--h2-max-frame-size must be between"),
        ({"h2_max_concurrent_streams": 0}, "--h2-max-concurrent-streams must be greater"),
        ({"h2_max_header_list_size": 0}, "--h2-max-header-list-size must be greater"),
        ({"h2_max_resets_per_second": 0}, "--h2-max-resets-per-second must be greater"),
        ({"h2_max_control_frames_per_second": -1}, "--h2-max-control-frames-per-second must"),
    ],
)
def test_invalid_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(app="x:y", **options)


def test_flags_come_from_the_fields() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "x:y",
            "--http2",
            "off",
            "--h2-max-concurrent-streams",
            "50",
            "--h2-max-header-list-size",
            "8192",
            "--h2-initial-window-size",
            "1048576",
            "--h2-max-frame-size",
            "32768",
            "--h2-max-resets-per-second",
            "20",
            "--h2-max-control-frames-per-second",
            "30",
        ]
    )
    given = {k: v for k, v in vars(args).items() if k not in ("command", "print_config")}
    config = Config(**given)
    assert config.http2 == "off"
    assert config.h2_max_concurrent_streams == 50
    assert config.h2_max_header_list_size == 8192
    assert config.h2_initial_window_size == 1048576
    assert config.h2_max_frame_size == 32768
    assert (config.h2_max_resets_per_second, config.h2_max_control_frames_per_second) == (20, 30)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "x:y", "--http2", "maybe"])


# -- the phase tables -------------------------------------------------------------------------


def reachable(moves: dict[Any, set[Any]], start: Any) -> set[Any]:
    seen, todo = {start}, [start]
    while todo:
        for target in moves[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_connection_table() -> None:
    assert set(MOVES) == set(Phase)
    assert reachable(MOVES, Phase.OPENING) == set(Phase)
    assert all(Phase.CLOSED in targets for targets in MOVES.values())
    assert MOVES[Phase.CLOSED] == {Phase.CLOSED}
    # A stop goes forward only: no phase after NOTICE leads back to serving new streams.
    assert reachable(MOVES, Phase.NOTICE) == {Phase.NOTICE, Phase.DRAINING, Phase.CLOSED}
    assert {s for s, t in MOVES.items() if Phase.NOTICE in t} == {
        Phase.OPENING,
        Phase.IDLE,
        Phase.ACTIVE,
    }
    assert Phase.OPENING not in set().union(*MOVES.values())  # never entered again


def test_the_stream_table() -> None:
    assert set(STREAM_MOVES) == set(StreamPhase)
    assert reachable(STREAM_MOVES, StreamPhase.PENDING) == set(StreamPhase)
    assert all(StreamPhase.DONE in targets for targets in STREAM_MOVES.values())
    # Only a running handler can be orphaned; an orphan or a flushing stream only ends.
    assert {s for s, t in STREAM_MOVES.items() if StreamPhase.ORPHANED in t} == {
        StreamPhase.RUNNING
    }
    assert (
        STREAM_MOVES[StreamPhase.ORPHANED]
        == STREAM_MOVES[StreamPhase.FLUSHING]
        == {StreamPhase.DONE}
    )


# -- the guard ----------------------------------------------------------------------------------


def test_a_budget_allows_its_burst_then_its_rate() -> None:
    budget = Budget(rate=10.0, burst=5, now=0.0)
    assert all(budget.spend(0.0) for _ in range(5))
    assert not budget.spend(0.0)
    budget = Budget(rate=10.0, burst=5, now=0.0)
    for _ in range(5):
        budget.spend(0.0)
    assert budget.spend(0.1)  # one token back after a tenth of a second
    assert not budget.spend(0.1)
    # Steady at the rate, forever.
    budget = Budget(rate=10.0, burst=5, now=0.0)
    assert all(budget.spend(n / 10) for n in range(1, 1000))
    # Refill stops at the burst: a long quiet spell buys no more than it.
    budget = Budget(rate=10.0, burst=5, now=0.0)
    assert sum(budget.spend(1000.0) for _ in range(10)) == 5


def guard(**options: Any) -> FrameGuard:
    return FrameGuard(H2Settings(**options), 0.0)


def test_the_guard_reads_frames_however_the_bytes_are_split() -> None:
    wire = PREFACE + b"".join(
        raw_frame(kind, flags, 1, b"x" * size)
        for kind, flags, size in [(0x4, 0, 6), (0x6, 0, 8), (0x0, 0, 100), (0x6, 1, 8)]
    )
    for step in (1, 2, 7, 9, 10, 33, len(wire)):
        # Exactly three control frames fit: SETTINGS, PING and PING ACK; the DATA is free.
        each = guard(control_frames_per_second=1e-9, control_burst=3)
        for start in range(0, len(wire), step):
            assert each.scan(wire[start : start + step], 0.0) is None
        assert each.scan(raw_frame(0x6, 0, 0, b"1" * 8), 0.0) is not None


def test_the_guard_counts_replies() -> None:
    each = guard()
    each.scan(PREFACE, 0.0)
    each.scan(raw_frame(0x6, 0, 0, b"1" * 8) * 3 + raw_frame(0x4, 1, 0, b""), 0.0)
    assert each.replies == 3  # the SETTINGS ACK draws no reply
    each.scan(raw_frame(0x8, 0, 0, b"\x00\x00\x00\x01"), 0.0)
    assert each.replies == 0


def test_the_guard_refuses_an_oversized_frame_from_its_header() -> None:
    each = guard(max_frame_size=16384)
    each.scan(PREFACE, 0.0)
    header = (16385).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    assert each.scan(header, 0.0) == Violation(FRAME_SIZE_ERROR, "a frame of 16385 bytes")
    fine = guard(max_frame_size=16384)
    fine.scan(PREFACE, 0.0)
    assert fine.scan((16384).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01", 0.0) is None


def test_the_guard_bounds_a_header_block_across_continuations() -> None:
    each = guard(header_block_limit=1000)
    each.scan(PREFACE, 0.0)
    assert each.scan(raw_frame(0x1, 0, 1, b"h" * 600), 0.0) is None
    assert each.in_block
    assert each.scan(raw_frame(0x9, 0, 1, b"c" * 400), 0.0) is None
    assert each.scan(raw_frame(0x9, 0x4, 1, b"c"), 0.0) == Violation(
        ENHANCE_YOUR_CALM, "a header block over the limit"
    )
    ended = guard(header_block_limit=1000)
    ended.scan(PREFACE, 0.0)
    ended.scan(raw_frame(0x1, 0, 1, b"h" * 600), 0.0)
    assert ended.scan(raw_frame(0x9, 0x4, 1, b"c" * 400), 0.0) is None
    assert not ended.in_block
    # A new block starts its count afresh.
    assert ended.scan(raw_frame(0x1, 0x4, 3, b"h" * 1000), 0.0) is None


def test_what_the_guard_leaves_free() -> None:
    each = guard(control_frames_per_second=1.0, control_burst=1)
    each.scan(PREFACE, 0.0)
    free = [
        raw_frame(0x0, 0, 1, b"data"),  # DATA with data
        raw_frame(0x0, 1, 1, b""),  # an empty DATA that ends the stream
        raw_frame(0x1, 0x4, 3, b"h"),  # a whole header block
        raw_frame(0x8, 0, 0, b"\x00\x00\x00\x01"),  # WINDOW_UPDATE
        raw_frame(0x7, 0, 0, b"\x00" * 8),  # GOAWAY
    ]
    assert each.scan(b"".join(free) * 50, 0.0) is None
    assert each.scan(raw_frame(0x2, 0, 1, b"\x00" * 5), 0.0) is None  # the burst of one
    assert each.scan(raw_frame(0x2, 0, 1, b"\x00" * 5), 0.0) is not None


# -- what the pure modules import -------------------------------------------------------------


@pytest.mark.parametrize("name", ["preface", "settings", "checks", "guard", "phases"])
def test_the_pure_modules_import_no_h2_and_do_no_io(name: str) -> None:
    # A server without h2 still recognises an HTTP/2 client (preface.py says so); and these
    # are tested without a loop or a socket.
    import ast
    from pathlib import Path

    import dualgate.h2

    source = (Path(dualgate.h2.__file__).parent / f"{name}.py").read_text()
    tree = ast.parse(source)
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported.isdisjoint({"h2", "hpack", "hyperframe", "asyncio", "socket", "ssl"})
