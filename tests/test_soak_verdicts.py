"""The soak's checks (benchmarks/soak/verdicts.py) on made-up figures: each one can fail."""

from __future__ import annotations

import random

import pytest

from benchmarks.soak.ledger import Ledger, Range, parse_metrics
from benchmarks.soak.sampler import Sample
from benchmarks.soak.verdicts import (
    back_to_baseline,
    graceful_stop,
    memory_trend,
    metrics_agree,
    no_unexpected_errors,
    no_wrong_answers,
    streams_closed,
    theil_sen,
    websockets_closed,
)


def rss(mib: list[float], every: float = 1.0) -> list[Sample]:
    return [Sample(i * every, "load", int(m * 1024), 20, 21, 0.0) for i, m in enumerate(mib)]


def test_theil_sen_ignores_spikes_that_move_a_least_squares_fit() -> None:
    points = [(float(x), 2.0 * x + 1) for x in range(50)]
    points[40] = (40.0, 500.0)  # one wild sample
    points[45] = (45.0, -300.0)
    assert theil_sen(points) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        theil_sen([(1.0, 2.0), (1.0, 3.0)])


def test_a_steady_leak_fails_and_a_flat_noisy_rss_passes() -> None:
    noise = random.Random(3)
    flat = [50 + noise.uniform(-1, 1) for _ in range(600)]  # ten minutes of 1 s samples
    assert memory_trend(rss(flat)).passed
    leak = [50 + i * (2 / 60) + noise.uniform(-1, 1) for i in range(600)]  # 2 MiB/min
    verdict = memory_trend(rss(leak))
    assert not verdict.passed
    assert verdict.figures["slope_mib_per_min"] == pytest.approx(2, abs=0.2)


def test_one_step_is_not_a_trend_but_a_short_window_holds_growth_to_the_step_limit() -> None:
    # A 3 MiB step half way through a short second half: within the 4 MiB step allowance.
    assert memory_trend(rss([40.0] * 15 + [40.0] * 8 + [43.0] * 7)).passed
    # 10 MiB over the same 15 s is more than a step.
    assert not memory_trend(rss([40.0] * 15 + [40 + i * 0.7 for i in range(15)])).passed
    assert not memory_trend(rss([40.0] * 6)).passed  # too few samples to tell


def test_every_answer_right_and_every_kind_of_client_ran() -> None:
    assert no_wrong_answers({"a": 3, "b": 1}, {}, [], ["a", "b"]).passed
    wrong = no_wrong_answers({"a": 3, "b": 1}, {"a": 1}, ["a: 500"], ["a", "b"])
    assert not wrong.passed and "a: 500" in wrong.detail
    assert not no_wrong_answers({"a": 3}, {}, [], ["a", "b"]).passed


def test_streams_must_all_close_and_some_must_have_been_dropped() -> None:
    counts = {
        "streams_opened": 10,
        "streams_closed": 10,
        "streams_dropped": 4,
        "asgi_streams_opened": 5,
        "asgi_streams_closed": 5,
        "asgi_streams_dropped": 1,
    }
    assert streams_closed(counts).passed
    assert not streams_closed({**counts, "streams_closed": 9}).passed
    assert not streams_closed({**counts, "asgi_streams_closed": 4}).passed
    assert not streams_closed({**counts, "streams_dropped": 0}).passed


def test_descriptors_and_threads_must_come_back() -> None:
    base = Sample(0, "quiet", 1000, 14, 21, 1.0)
    assert back_to_baseline(base, Sample(9, "settle", 1200, 14, 21, 2.0), 1.0).passed
    assert not back_to_baseline(base, Sample(9, "settle", 1200, 15, 21, 2.0), 9.0).passed
    assert not back_to_baseline(base, Sample(9, "settle", 1200, 14, 22, 2.0), 9.0).passed
    assert not back_to_baseline(base, None, 0.0).passed


def test_sigterm_needs_every_request_finished_new_ones_refused_and_exit_zero() -> None:
    assert graceful_stop({"a": "ok", "b": "ok"}, 0, True, 2.0).passed
    assert not graceful_stop({"a": "ok", "b": "Cut: closed"}, 0, True, 2.0).passed
    assert not graceful_stop({"a": "ok"}, 1, True, 2.0).passed
    assert not graceful_stop({"a": "ok"}, None, True, 30.0).passed
    assert not graceful_stop({"a": "ok"}, 0, False, 2.0).passed
    assert not graceful_stop({}, 0, True, 2.0).passed


def test_only_the_raising_routes_may_log_errors() -> None:
    log = (
        "2026-12-01 [dualgate.error] INFO Serving ...\n"
        "2026-12-01 [dualgate.error] ERROR Exception in WSGI application /raise-late\n"
        "Traceback (most recent call last):\n"
        "2026-12-01 [dualgate.error] ERROR Exception in ASGI application /asgi/raise\n"
    )
    assert no_unexpected_errors(log).passed
    other = log + "2026-12-01 [dualgate.error] ERROR Pool thread job failed\n"
    verdict = no_unexpected_errors(other)
    assert not verdict.passed and "Pool thread job failed" in verdict.detail


def test_baseline_is_per_process_and_a_replaced_worker_fails_it() -> None:
    base = Sample(
        0, "quiet", 3000, 40, 40, 1.0, ((1, 1000, 8, 2), (2, 1000, 16, 19), (3, 1000, 16, 19))
    )
    # The same sums but one worker up and another down: still a leak in the one.
    moved = Sample(
        9, "settle", 3000, 40, 40, 2.0, ((1, 1000, 8, 2), (2, 1000, 17, 19), (3, 1000, 15, 19))
    )
    assert not back_to_baseline(base, moved, 9.0).passed
    same = Sample(9, "settle", 3000, 40, 40, 2.0, base.per_process)
    assert back_to_baseline(base, same, 1.0).passed
    replaced = Sample(
        9, "settle", 3000, 40, 40, 2.0, ((1, 1000, 8, 2), (2, 1000, 16, 19), (4, 1000, 16, 19))
    )
    verdict = back_to_baseline(base, replaced, 1.0)
    assert not verdict.passed and "new processes [4]" in verdict.detail


def test_every_websocket_session_must_end_in_the_app_and_some_must_be_dropped() -> None:
    assert websockets_closed({"ws_opened": 5, "ws_closed": 5, "ws_lost": 2}).passed
    assert not websockets_closed({"ws_opened": 5, "ws_closed": 4, "ws_lost": 2}).passed
    assert not websockets_closed({"ws_opened": 5, "ws_closed": 5}).passed


METRICS = """\
# HELP dualgate_requests_total Requests answered.
# TYPE dualgate_requests_total counter
dualgate_requests_total{interface="asgi",status="2xx"} 2
dualgate_requests_total{interface="websocket",status="1xx"} 1
dualgate_requests_total{interface="wsgi",status="2xx"} 3
dualgate_requests_total{interface="wsgi",status="5xx"} 1
dualgate_requests_total{interface="wsgi",status="none"} 1
dualgate_refusals_total{reason="malformed"} 1
dualgate_refusals_total{reason="timeout"} 0
dualgate_http_requests_total{http_version="1.1"} 5
dualgate_http_requests_total{http_version="2"} 3
dualgate_http2_connections_total 1
dualgate_http2_resets_total{by="client"} 1
dualgate_http2_resets_total{by="server"} 0
dualgate_http2_goaways_sent_total{kind="graceful"} 0
dualgate_http2_goaways_sent_total{kind="no_error"} 0
dualgate_http2_goaways_sent_total{kind="error"} 0
dualgate_workers{state="ready"} 2
dualgate_worker_restarts_total{reason="crashed"} 0
"""


def ledger() -> Ledger:
    """What the clients behind METRICS saw: every figure there within its range."""
    book = Ledger()
    for _ in range(3):
        book.request("1.1", "/hello").answered(200)
    book.request("1.1", "/raise").answered(500)
    book.request("1.1", "/upload")  # a client that vanished: may or may not be counted
    book.request("1.1", "/asgi/ws", "websocket").answered(101)
    book.request("2", "/asgi/hello").answered(200)
    book.request("2", "/asgi/download").answered(200)
    book.request("2", "/upload").started()  # reset by the client after the server took some
    book.sure("h2_connections")
    book.sure("h2_resets_client")
    book.sure("refusals_malformed")
    return book


def test_metrics_agree_when_every_figure_is_within_what_the_clients_know() -> None:
    scrape = parse_metrics(METRICS)
    verdict = metrics_agree(ledger(), scrape, workers=2, app={"ws_opened": 1})
    assert verdict.passed, verdict.detail
    assert "WebSocket sessions 1" in verdict.detail
    # Above, the vanished upload was never read; had it been, it counts too (status none).
    more = METRICS.replace('status="none"} 1', 'status="none"} 2').replace('"1.1"} 5', '"1.1"} 6')
    assert metrics_agree(ledger(), parse_metrics(more), workers=2).passed


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ('http_version="2"} 3', 'http_version="2"} 2', "HTTP/2 requests: server 2, clients 3"),
        ('"1.1"} 5', '"1.1"} 7', "HTTP/1.1 requests: server 7, clients 5..6"),
        ('"websocket",status="1xx"} 1', '"websocket",status="1xx"} 2', "WebSocket sessions"),
        ('status="5xx"} 1', 'status="5xx"} 0', "wsgi 5xx: server 0, clients 1"),
        ('by="client"} 1', 'by="client"} 0', "reset by the client: server 0, clients 1"),
        ('by="server"} 0', 'by="server"} 1', "reset by the server: server 1, clients 0"),
        ("connections_total 1", "connections_total 2", "HTTP/2 connections: server 2"),
        ('kind="error"} 0', 'kind="error"} 1', "HTTP/2 GOAWAY error: server 1, clients 0"),
        ('reason="timeout"} 0', 'reason="timeout"} 3', "refusals timeout: server 3, clients 0"),
        ('state="ready"} 2', 'state="ready"} 1', "workers ready: server 1, clients 2"),
        ('reason="crashed"} 0', 'reason="crashed"} 1', "worker restarts: server 1, clients 0"),
    ],
)
def test_a_mismatch_against_metrics_fails_with_a_line_naming_it(
    old: str, new: str, named: str
) -> None:
    assert old in METRICS
    verdict = metrics_agree(ledger(), parse_metrics(METRICS.replace(old, new)), workers=2)
    assert not verdict.passed
    assert named in verdict.detail, verdict.detail


def test_the_app_and_the_server_must_agree_on_websocket_sessions() -> None:
    verdict = metrics_agree(ledger(), parse_metrics(METRICS), workers=2, app={"ws_opened": 2})
    assert not verdict.passed and "WebSocket sessions the app saw: server 1" in verdict.detail


def test_a_ticket_moves_from_unsure_to_started_to_answered_once() -> None:
    book = Ledger()
    ticket = book.request("2", "/asgi/upload")
    assert book.by_version()["2"] == Range(0, 1)
    ticket.started()
    assert book.by_version()["2"] == Range(1, 0)
    ticket.answered(404)
    ticket.answered(200)  # counted once, with its first status
    assert book.by_interface_and_class()[("asgi", "4xx")] == Range(1, 0)
    assert book.by_interface_and_class()[("asgi", "2xx")] == Range(0, 0)
    with pytest.raises(ValueError):
        parse_metrics('dualgate_requests_total{a="b"}\n')
