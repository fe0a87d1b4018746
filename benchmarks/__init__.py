"""Benchmark harness for dualgate: `python -m benchmarks --help`.

Every server under test runs as a subprocess on a free 127.0.0.1 port, serving the apps in
`benchmarks.apps`, and is driven by wrk (or the built-in client in `benchmarks.client`).
"""
