"""The checked parts start_response and the head writer keep (bridge.py, framing.py): a part
is checked once, then looked up; the rules still hold on every response, and the caches stay
bounded."""

from __future__ import annotations

import pytest

from dualgate.http import framing
from dualgate.http.framing import LENGTH, build_head
from dualgate.wsgi import bridge


def head(headers: list[tuple[bytes, bytes]], keep_alive: bool = True) -> framing.ResponseHead:
    return build_head(
        200,
        b"OK",
        headers,
        head_request=False,
        http11=True,
        keep_alive=keep_alive,
        whole_body=None,
        extra=[],
        extra_head=b"",
    )


def test_a_cached_field_is_written_as_given_and_framing_fields_are_always_read() -> None:
    fields = [(b"X-Cached", b"yes"), (b"content-length", b"3")]
    first = head(fields)
    assert (b"X-Cached", b"yes") in framing._field_lines
    assert all(name != b"content-length" for name, _ in framing._field_lines)
    second = head(fields)
    assert first.data == second.data
    assert b"\r\nX-Cached: yes\r\n" in second.data
    assert (second.framing, second.length) == (LENGTH, 3)
    # Connection: close decides keep-alive on every response, cached or not.
    assert not head([(b"connection", b"close")]).keep_alive
    assert not head([(b"connection", b"close")]).keep_alive


def test_invalid_parts_are_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            head([(b"x-bad", b"a\nb")])
        with pytest.raises(ValueError):
            build_head(
                200,
                b"O\nK",
                [],
                head_request=False,
                http11=True,
                keep_alive=True,
                whole_body=0,
                extra=[],
                extra_head=b"",
            )
    assert (b"x-bad", b"a\nb") not in framing._field_lines


def test_start_response_checks_still_hold_after_caching() -> None:
    assert bridge._parse_status("200 OK") == bridge._parse_status("200 OK") == (200, b"OK")
    pairs, length = bridge._encode_headers([("Content-Type", "text/plain")])
    assert pairs == [(b"Content-Type", b"text/plain")] and length is None
    assert bridge._encode_headers([("Content-Type", "text/plain")])[0] == pairs
    # Content-Length is decided per response: never taken from the cache.
    with pytest.raises(ValueError, match="conflicting"):
        bridge._encode_headers([("Content-Length", "3"), ("Content-Length", "4")])
    with pytest.raises(ValueError, match="conflicting"):
        bridge._encode_headers([("Content-Length", "3"), ("Content-Length", "4")])
    with pytest.raises(TypeError):
        bridge._encode_headers([(b"Content-Type", "text/plain")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="hop-by-hop"):
        bridge._encode_headers([("Connection", "close")])


def test_the_caches_stay_bounded() -> None:
    for index in range(3000):
        head([(b"x-many", b"%d" % index)])
        bridge._encode_headers([("X-Many", str(index))])
        bridge._parse_status(f"200 OK{index}")
    assert len(framing._field_lines) <= framing._CACHE_LIMIT
    assert len(bridge._encoded_pairs) <= bridge._CACHE_LIMIT
    assert len(bridge._statuses) <= bridge._CACHE_LIMIT
    long_value = b"v" * (framing._CACHED_VALUE_LIMIT + 1)
    framing._field_lines.clear()
    head([(b"x-long", long_value)])
    assert framing._field_lines == {}
