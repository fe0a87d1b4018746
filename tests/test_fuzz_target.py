"""The fuzz harness's checker (benchmarks/fuzz_target.py), without atheris.

Every seed input (benchmarks/fuzz_corpus/, the fuzzer's findings among them as `found-*`)
replays clean, and the checker catches a reader that breaks each invariant it claims to check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fuzz_target import (
    PLAIN,
    Options,
    Violation,
    decode,
    encode,
    reader_factory,
    run_one,
)
from dualgate.http.checks import Refusal
from dualgate.http.reader import CLOSED, NEED_DATA, ReaderEvent, Request, RequestReader, head_parser

ROOT = Path(__file__).resolve().parent.parent
SEEDS = sorted((ROOT / "benchmarks" / "fuzz_corpus").iterdir())
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HEAD_PARSERS = ["h11", "httptools"]  # benchmarks.fuzz --http
POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"


def test_the_seed_corpus_holds_the_differential_corpus_and_the_findings() -> None:
    names = {path.name for path in SEEDS}
    assert len(names) >= 150
    assert {"cl-te", "te-cl", "chunk-ext-bare-lf", "valid-pipelined-three"} <= names
    assert sum(name.startswith("found-") for name in names) >= 3


@pytest.mark.parametrize("http", HEAD_PARSERS)
@pytest.mark.parametrize("path", SEEDS, ids=[path.name for path in SEEDS])
def test_every_seed_replays_without_a_violation(path: Path, http: str) -> None:
    run_one(path.read_bytes(), reader_factory(http))


def test_inputs_decode_to_options_and_pieces() -> None:
    options = Options(body_limit=True, small_limits=False, eof=True, answer_late=False)
    data = encode(b"abcdef", options, (2, 4, 4))
    assert decode(data) == (options, [b"ab", b"cd", b"ef"])
    # Cut positions wrap around the stream's length; a short input is a stream of nothing.
    assert decode(encode(b"abc", PLAIN, (5,)))[1] == [b"a", b"bc"]
    assert decode(b"") == (PLAIN, [])


# -- readers that break one invariant each ----------------------------------------------------


class RequestAfterRefusal(RequestReader):
    """Lets a pipelined request through after refusing the one before it."""

    def next_event(self) -> ReaderEvent:
        event = super().next_event()
        if event is NEED_DATA and self.__dict__.get("refused"):
            self.__dict__["refused"] = False
            fresh = RequestReader(65536, 100, None)
            fresh.feed(GET)
            return fresh.next_event()
        if type(event) is Refusal:
            self.__dict__["refused"] = True
        return event


class LongBody(RequestReader):
    """Hands out one body byte more than the Content-Length."""

    def next_event(self) -> ReaderEvent:
        event = super().next_event()
        return event + b"!" if type(event) is bytes else event


class NeverClosed(RequestReader):
    """Keeps waiting after EOF instead of saying CLOSED."""

    def next_event(self) -> ReaderEvent:
        event = super().next_event()
        return NEED_DATA if event is CLOSED else event


class FirstByteLost(RequestReader):
    """Drops the first byte of every piece after the first: splits change what it reads."""

    def feed(self, data: bytes) -> None:
        if self.__dict__.get("fed"):
            data = data[1:]
        self.__dict__["fed"] = True
        super().feed(data)


class BadTarget(RequestReader):
    """Hands on a target with a space in it."""

    def next_event(self) -> ReaderEvent:
        event = super().next_event()
        return event.with_target(b"/a b") if type(event) is Request else event


EOF_FLAG = Options(body_limit=False, small_limits=False, eof=True, answer_late=False)
BROKEN = [
    (RequestAfterRefusal, encode(b"GET / HTTP/1.1\r\n\r\n" + GET), "after a refusal"),
    (LongBody, encode(POST), "body bytes for Content-Length"),
    (NeverClosed, encode(GET, EOF_FLAG), "no CLOSED"),
    (FirstByteLost, encode(GET + GET, PLAIN, (10,)), "depend on how the bytes arrive"),
    (BadTarget, encode(GET), "target"),
]


@pytest.mark.parametrize("http", HEAD_PARSERS)
@pytest.mark.parametrize(
    ("reader", "data", "message"), BROKEN, ids=[reader.__name__ for reader, _, _ in BROKEN]
)
def test_the_checker_catches_a_broken_reader(
    reader: type[RequestReader], data: bytes, message: str, http: str
) -> None:
    parse_head = head_parser(http)
    run_one(data, reader_factory(http))  # the real reader passes the same input
    with pytest.raises(Violation, match=message):
        run_one(data, lambda head, fields, body: reader(head, fields, body, parse_head))


def test_the_fuzz_command_says_how_to_install_atheris_when_it_is_missing() -> None:
    code = (
        "import sys; sys.modules['atheris'] = None\n"
        "from benchmarks.fuzz import main\n"
        "sys.exit(main(['--seconds', '1']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done
    assert "pip install '.[fuzz]'" in done.stderr
