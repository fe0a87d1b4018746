"""HTTP/2's figures, counted over a real socket and rendered for Prometheus."""

from __future__ import annotations

import httpx

from dualgate.metrics.prometheus import render
from tests.conftest import running_server
from tests.h2.apps import asgi_app


def test_http2_requests_resets_and_goaways_are_counted() -> None:
    with running_server(asgi_app, http2="on", metrics_address="127.0.0.1:0") as server:
        base = f"http://127.0.0.1:{server.addresses[0][1]}"
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            for _ in range(3):
                assert client.get(f"{base}/info").http_version == "HTTP/2"
            snapshot = server.stats()
            assert snapshot.h2_streams_open == 0
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{base}/info").http_version == "HTTP/1.1"
        stats = server.stats()
    assert (stats.h2_connections, stats.h2_streams) == (1, 3)
    assert stats.requests_by_version() == {"1.1": 1, "2": 3}
    text = render(stats).decode()
    assert 'dualgate_http_requests_total{http_version="2"} 3' in text
    assert "dualgate_http2_connections_total 1" in text
    assert 'dualgate_http2_resets_total{by="client"} 0' in text
