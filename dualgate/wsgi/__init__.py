"""WSGI (PEP 3333): the bridge, the bounded thread pool, the thread side, `WSGIMiddleware`.

`bridge` holds every PEP 3333 rule and talks to two small protocols (a body source and a
response sink); `threads` feeds it from the server's request cycles, `middleware` from ASGI
receive/send. `pool` knows threads, not HTTP.

May import: the stdlib, `dualgate.http.grammar` and `dualgate.http.paths` (pure),
`dualgate.logs`, `dualgate.metrics.snapshot` (plain figures). `threads` alone may import the
HTTP cycle. Importing `middleware` or `pool` must load neither h11 nor the HTTP core.
"""
