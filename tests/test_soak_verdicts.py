"""The soak's checks (benchmarks/soak/verdicts.py) on made-up figures: each one can fail."""

from __future__ import annotations

import random

import pytest

from benchmarks.soak.sampler import Sample
from benchmarks.soak.verdicts import (
    back_to_baseline,
    graceful_stop,
    memory_trend,
    no_unexpected_errors,
    no_wrong_answers,
    streams_closed,
    theil_sen,
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
