"""The applications every server serves, one module per scenario (named as MODULE:ATTR)."""

import os

# The streaming apps and the client must agree on the size without a round trip, so the harness
# passes it to the server through the environment.
STREAM_BYTES_ENV = "DUALGATE_BENCH_STREAM_BYTES"
DEFAULT_STREAM_BYTES = 200 * 1024 * 1024
CHUNK = 64 * 1024


def stream_bytes() -> int:
    return int(os.environ.get(STREAM_BYTES_ENV, DEFAULT_STREAM_BYTES))
