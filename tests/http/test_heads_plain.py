"""Two shortcuts on the head path give the answers of the long way for every head: the heads of
every corpus request, every fuzz seed and hypothesis-made requests, valid and mutated, and
heads made to sit on the shortcuts' edges.
- The h11 reader's plain-head shortcut (heads.py `parse_head_h11`) gives h11's own answer
  (`parse_head_h11_only`).
- checks.py's one-scan test of the raw head (`_CLEAN_HEAD`) matches exactly the heads that pass
  its three raw-head rules (bare CR or LF, obs-fold, control characters).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from benchmarks.fuzz_target import decode
from dualgate.http.checks import _CLEAN_HEAD, _HEAD_BYTES, _OBS_FOLD
from dualgate.http.heads import _PLAIN, parse_head_h11, parse_head_h11_only
from tests.http.test_readers_differential import CORPUS, SEEDS, SETTINGS, edits, mutate, streams


def heads_in(data: bytes) -> list[bytes]:
    """Every whole head a reader would hand its parser, cut as the reader cuts them (up to the
    first blank line, empty lines before a request line dropped), each stretch of `data` taken
    as a start (a head's bytes are whatever follows the last one, pipelined or a body)."""
    found = []
    rest = data
    while rest:
        rest = rest.lstrip(b"\r\n")
        crlf, lf = rest.find(b"\n\r\n"), rest.find(b"\n\n")
        ends = [end for end in (crlf + 3 if crlf >= 0 else -1, lf + 2 if lf >= 0 else -1)
                if end > 0]  # fmt: skip
        if not ends or not rest:
            break
        end = min(ends)
        found.append(rest[:end])
        rest = rest[end:]
    return found


def passes_the_raw_rules(head: bytes) -> bool:
    """checks.py's three raw-head rules, each on its own, as check_request applies them."""
    lf = head.count(b"\n")
    return (
        lf == head.count(b"\r\n") == head.count(b"\r")
        and _OBS_FOLD.search(head) is None
        and not head.translate(None, _HEAD_BYTES)
    )


def assert_h11s_answer(data: bytes) -> int:
    heads = heads_in(data)
    for head in heads:
        assert parse_head_h11(head) == parse_head_h11_only(head), head
        if head[:1] > b"\x20":  # the reader refuses the others before any check
            assert (_CLEAN_HEAD(head) is not None) == passes_the_raw_rules(head), head
        elif _CLEAN_HEAD(head) is not None:
            assert passes_the_raw_rules(head), head
    return len(heads)


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_the_corpus_heads(path: Path) -> None:
    assert_h11s_answer(path.read_bytes())


@pytest.mark.parametrize("path", SEEDS, ids=[path.name for path in SEEDS])
def test_the_fuzz_seed_heads(path: Path) -> None:
    _, pieces = decode(path.read_bytes())
    assert_h11s_answer(b"".join(pieces))


@SETTINGS
@given(data=streams)
def test_generated_heads(data: bytes) -> None:
    assert_h11s_answer(data)


@SETTINGS
@given(data=streams, changes=edits)
def test_mutated_heads(data: bytes, changes: list[tuple[int, int, bytes]]) -> None:
    assert_h11s_answer(mutate(data, changes))


EDGES = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11's refusal
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 21 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 20 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \t a  b \t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.10\r\nHost: h\r\n\r\n",
    b"GET / http/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-\x00: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x0bb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: \x80\xff\t\r\n\r\n",
    b"GET / HTTP/1.1\r\r\nHost: h\r\n\r\n",
    b"GET /\tx HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x0b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize("head", EDGES)
def test_the_edges_of_the_shortcut(head: bytes) -> None:
    assert_h11s_answer(head)


def test_the_shortcut_takes_a_typical_head() -> None:
    # So the tests above compare two different paths, not h11 with itself.
    assert _PLAIN(b"GET /a?b HTTP/1.1\r\nHost: h:80\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
    assert _PLAIN(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n") is None
    assert _CLEAN_HEAD(b"GET / HTTP/1.1\r\nHost: h\r\nX: \xff\r\n\r\n")
    assert _CLEAN_HEAD(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n") is None
