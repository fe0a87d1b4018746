"""The one step the request readers do not share: a whole raw head into its parts. Pure.

The reader (reader.py) finds where a head ends, holds it to the size and field-count limits,
checks it (checks.py) and frames its body on the raw bytes; between those steps a head parser
turns the head's bytes into a `Head` (method, target, version, header fields) or a `Refusal`.
Two parsers give the same answer for every head (tests/http/test_readers_differential.py):
- `parse_head_h11`, here: h11 0.16, the reference. This module owns h11, so an h11 upgrade is a
  review of this file and of the field-line grammar that checks.py copies from it for trailers.
  A plain head (the narrowest shape of h11's grammar) is cut here as h11 would cut it; h11
  parses the rest (`parse_head_h11_only`).
- `parse_head_llhttp` (heads_llhttp.py): llhttp through httptools, for less CPU per request.
`reader.head_parser(config.http)` is the choice a connection makes (`--http auto|h11|httptools`).

A parser sees only whole heads: every byte up to and including the blank line, no more, with
at least one byte before it (the reader refuses the rest first). Header names come lower-cased
and values without the white space around them, with h11's normalisation: one Content-Length
field for identical ones, and Transfer-Encoding lower-cased.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from typing import NamedTuple

import h11
from h11._readers import maybe_read_from_IDLE_client
from h11._receivebuffer import ReceiveBuffer

from dualgate.http.checks import Refusal, final_coding_is_chunked
from dualgate.http.grammar import Headers

__all__ = ["HTTP_PARSERS", "Head", "HeadParser", "httptools_installed"]


class Head(NamedTuple):
    method: bytes
    target: bytes
    http_version: bytes  # as sent: b"1.1", b"1.0", b"1.2", b"2.0"...
    headers: Headers


HeadParser = Callable[[bytes], Head | Refusal]
HTTP_PARSERS = ("auto", "h11", "httptools")


def parse_head_h11(head: bytes) -> Head | Refusal:
    """h11's answer for one whole head, its errors as the reader's refusals.

    A plain head (`_PLAIN`: every line in the narrowest shape of h11's own grammar, no field
    that h11 rewrites or may refuse) is cut into its parts here, as h11 would cut it, in a
    fraction of h11's time; h11 parses every other head (`parse_head_h11_only`), so h11's
    answer is the answer either way. tests/http/test_heads_plain.py holds the two to the same
    answers."""
    if _PLAIN(head) is None:
        return parse_head_h11_only(head)
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    version = version[5:]
    headers = []
    hosts = lengths = 0
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"host":
            hosts += 1
        elif name in _REWRITTEN:
            # h11 normalises these (merged lengths, a lower-cased coding) or refuses them.
            if name != b"content-length" or not value.isdigit() or len(value) > 20:
                return parse_head_h11_only(head)
            lengths += 1
        headers.append((name, value))
    if hosts > 1 or (not hosts and version == b"1.1") or lengths > 1:
        return parse_head_h11_only(head)  # h11's refusal or merge, with its message
    return _new_head(Head, (method, target, version, headers))


# A head h11 reads exactly as `parse_head_h11` cuts it: h11's grammar (h11/_abnf.py) with
# CRLF line ends only, no obs-fold (a line starting with white space), no obs-text (bytes over
# 0x7e), no white space but SP and HTAB around a value and a single SP between its words. The
# request line: a method token, SP, a target of VCHARs, SP, HTTP/d.d.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_PLAIN = re.compile(
    _TOKEN + rb" [\x21-\x7e]+ HTTP/[0-9]\.[0-9]\r\n"
    rb"(?:" + _TOKEN + rb":[ \t]*(?:[\x21-\x7e]+(?: [\x21-\x7e]+)*)?[ \t]*\r\n)*\r\n"
).fullmatch
# The fields h11's Request rewrites or refuses on their values: a Transfer-Encoding always goes
# to h11, a Content-Length unless it is one plain number.
_REWRITTEN = frozenset({b"content-length", b"transfer-encoding"})


def parse_head_h11_only(head: bytes) -> Head | Refusal:
    """h11's parse of one whole head, its errors as the reader's refusals.

    h11's own reader of a request head, as its `Connection` calls it for a client in IDLE, with
    no `Connection` around it: h11 only ever parses here (framing.py writes responses), and
    for a whole head the Connection adds nothing but a state machine that cannot refuse what
    the reader accepted (its body framing reads what the `Request` event validated already).
    That machine cost more than the parse itself: about 40% of this function's time. The
    refusals are the same: the reader's errors are the ones `next_event` re-raises, status and
    message alike. h11 is pinned to 0.16 (pyproject.toml) for these two private names."""
    buffer = ReceiveBuffer()
    buffer += head
    try:
        event = maybe_read_from_IDLE_client(buffer)
    except h11.ProtocolError as exc:
        return _refusal(exc, head)
    # A whole head is a Request or an error: h11 waits for nothing past the blank line.
    assert type(event) is h11.Request, event
    # The (name, value) pairs h11's Headers sequence would give, without a Python call each.
    headers = [(name, value) for _, name, value in event.headers._full_items]
    return _new_head(Head, (event.method, event.target, event.http_version, headers))


# The NamedTuple's own __new__ is a Python function: a third of a microsecond per head.
_new_head = tuple.__new__


def _refusal(exc: h11.ProtocolError, head: bytes) -> Refusal:
    status = exc.error_status_hint
    if status == 501 and not final_coding_is_chunked(head):
        # h11 answers every Transfer-Encoding but a lone "chunked" with 501; RFC 9112
        # section 6.3 item 4 makes a request whose final coding is not chunked a MUST-400
        # ("chunked, gzip", "gzip"). 501 stays for "gzip, chunked".
        return Refusal(400, f"Malformed request: {exc}", "smuggling")
    return Refusal(status, f"Malformed request: {exc}", "malformed")


def httptools_installed() -> bool:
    return importlib.util.find_spec("httptools") is not None
