"""The head parser over llhttp (httptools): h11's answer for every head, at a fraction of its CPU.

llhttp, strict (no leniency flag set), validates the head in C: every byte of it, the request
line, each field line, CRLF line ends, Content-Length and Transfer-Encoding. Its grammar is a
subset of h11's in all but the shapes below, so a head it accepts is cut into its parts with a
few bytes operations, exactly as h11 would cut it. Where llhttp is laxer than h11 and the
reader's checks (checks.py) would not refuse the head the same way, a test here sends the head
to h11 (heads.py), whose answer is then the answer:
- a request line that is not exactly `method SP target SP HTTP/d.d` (llhttp takes two spaces
  before or after the target, `RTSP/` and `ICE/` versions, and a 0.9 line without a version);
- a Host field missing from an HTTP/1.1 request, or given twice;
- a Transfer-Encoding other than `chunked` (llhttp frames `gzip, chunked` as chunked and leaves
  the rest to its caller; h11 answers 501, which the reader may make a 400);
- a Content-Length of more than 20 digits (leading zeros: llhttp counts the value, h11 digits).
Where llhttp is stricter than h11 (it knows a fixed list of methods, upper-case; it refuses two
identical Content-Length fields, a version other than 0.9, 1.0, 1.1 and 2.0, and so on), it
refuses, and the head goes to h11 too. So h11 decides every head llhttp refuses: those are
rare (a client's mistake, an unusual method), and the answer, refusal or request, is the h11
reader's own. tests/http/test_readers_differential.py holds the two parsers to the same answers.

One llhttp parser per head, with no callbacks: it is only asked whether the head is valid, and
a fresh one costs about as much as a reset would (0.6 µs against 0.46 µs for a parser kept per
connection, which needs a Python callback per request to know that its message ended).
"""

from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from dualgate.http.checks import Refusal
from dualgate.http.heads import Head, parse_head_h11

__all__ = ["parse_head_llhttp"]


def parse_head_llhttp(head: bytes) -> Head | Refusal:
    try:
        HttpRequestParser(None).feed_data(head)
    except HttpParserUpgrade:
        pass  # CONNECT, or Connection: upgrade: the head was parsed whole all the same
    except HttpParserError:
        return parse_head_h11(head)
    # llhttp accepted it, so every line ends in CRLF and no CR stands alone (llhttp refuses a
    # bare CR or LF), and the last two pieces are the blank line's.
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return parse_head_h11(head)
    method, target, version = parts
    known = _VERSIONS.get(version)
    if known is not None:
        version = known
    elif len(version) != 8 or version[:5] != b"HTTP/":
        return parse_head_h11(head)
    else:
        version = version[5:]
    headers = []
    hosts = 0
    for line in lines[1:-2]:
        # llhttp took the name as a token, so the first colon ends it.
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            if len(value) > 20:
                return parse_head_h11(head)
        elif name == b"transfer-encoding":
            value = value.lower()
            if value != b"chunked":
                return parse_head_h11(head)
        headers.append((name, value))
    if hosts > 1 or (not hosts and version == b"1.1"):
        return parse_head_h11(head)
    # The NamedTuple's own __new__ is a Python function: a third of a microsecond per head.
    return _new_head(Head, (method, target, version, headers))


_new_head = tuple.__new__
# The two versions nearly every request has, looked up instead of checked and sliced.
_VERSIONS = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
