"""HTTP/2 (RFC 9113) over python-hyper's h2: one connection's frames in, streams out.

Owns: how a connection is recognised as HTTP/2 (`preface`: the prior-knowledge preface, ALPN),
the settings a server derives from Config (`settings`), the request-head and response-head
rules h2 leaves to its user (`checks`), the frame-level defences that run before h2 spends
work (`guard`), what h2 itself is told and where it is bent (`machine`), the phases of a
connection and of a stream (`phases`), the sans-IO connection (`core`), one request and its
response as a handler sees it (`stream`), and the asyncio protocol (`protocol`).

May import: the stdlib, h2 (with hpack and hyperframe, which it brings), `dualgate.config`,
`dualgate.logs`, `dualgate.metrics` (plain figures) and the parts of `dualgate.http` that are
protocol-neutral (`grammar`, `state`'s types). Never the interfaces (`wsgi`, `asgi`, `ws`), the
process layer or the server. `preface`, `settings`, `checks` and `guard` import nothing of h2,
so a server without it can still recognise an HTTP/2 client and tell it so.
"""
